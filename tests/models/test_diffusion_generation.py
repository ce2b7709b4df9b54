"""Conditional generation of the diffusion models (`sample(input_ids=...)`): every sampler of both models keeps the
given tokens bit for bit, never returns the mask, honours padding and ragged prompts, is reproducible by seed, and
draws a masked position from the model's own p(x_0 | x_t) given the kept context (checked against the forward pass's
softmax by Monte Carlo)."""

import pytest
import torch

from modeling.mdlm.modeling_mdlm import first_hitting_times, reveal_most_confident

from .test_diffusion_behaviour import bd3lm, mdlm

MASK = 39
SAMPLERS = ["ddpm", "ddpm_cache", "confidence", "first_hitting"]
# prefix and suffix kept, two spans to fill; 12 tokens = three BD3-LM blocks, the first one clean context
INFILL = torch.tensor([[1, 5, 7, 9, 2, MASK, MASK, 6, 7, MASK, 11, 12],
                       [1, 8, 3, 9, MASK, MASK, MASK, MASK, 4, 4, MASK, 12]])


def options(sampler):
    return {"sampler": sampler, **({"num_steps": 6} if sampler.startswith("ddpm") else {})}


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_infilling_keeps_the_given_tokens_and_fills_every_mask(build, sampler):
    model = build()
    sample = model.sample(input_ids=INFILL, num_samples=3, seed=0, **options(sampler))
    expected = INFILL.repeat_interleave(3, dim=0)
    kept = expected != MASK
    assert sample.shape == expected.shape and sample.dtype == torch.long
    assert torch.equal(sample[kept], expected[kept]) and not (sample == MASK).any()
    assert torch.equal(sample, model.sample(input_ids=INFILL, num_samples=3, seed=0, **options(sampler)))
    assert not torch.equal(sample, model.sample(input_ids=INFILL, num_samples=3, seed=1, **options(sampler)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bd3lm_cache_changes_no_draw(sampler):
    model = bd3lm()
    cached = model.sample(input_ids=INFILL, seed=4, **options(sampler))
    assert torch.equal(cached, model.sample(input_ids=INFILL, seed=4, use_cache=False, **options(sampler)))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_ragged_prompts_continue_after_their_own_last_token(build, sampler):
    """Right-padded prompts of 3 and 5 tokens, 4 new tokens each: the new tokens follow each prompt, padding (the
    pad id, attention 0) moves behind them."""
    model = build()
    prompts = torch.tensor([[1, 5, 6, 0, 0], [1, 5, 6, 7, 8]])
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    sample = model.sample(input_ids=prompts, attention_mask=attention, max_new_tokens=4, seed=0, **options(sampler))
    assert sample.shape == (2, 9) and not (sample == MASK).any()
    assert torch.equal(sample[0, :3], prompts[0, :3]) and torch.equal(sample[0, 7:], torch.zeros(2, dtype=torch.long))
    assert torch.equal(sample[1, :5], prompts[1])


def test_left_padding_is_refused_for_bd3lm_and_padding_never_holds_the_mask():
    with pytest.raises(ValueError, match="pad on the right"):
        bd3lm().sample(input_ids=torch.tensor([[0, 1, 5, MASK]]), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    for model in (mdlm(), bd3lm()):
        with pytest.raises(ValueError, match="padding position"):
            model.sample(input_ids=torch.tensor([[1, 5, MASK, MASK]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    left = mdlm().sample(input_ids=torch.tensor([[0, 1, 5, MASK]]), attention_mask=torch.tensor([[0, 1, 1, 1]]),
                         num_steps=2)
    assert left[0, 0] == 0 and not (left == MASK).any()


@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_options_that_do_not_fit_are_refused_before_any_step(build):
    model = build()
    refusals = [
        (dict(sampler="greedy"), "sampler must be one of"),
        (dict(sampler="confidence", num_steps=4), "num_steps belongs to the ancestral samplers"),
        (dict(sampler="ddpm", tokens_per_step=2), "tokens_per_step belongs to the confidence sampler"),
        (dict(sampler="first_hitting", tokens_per_step=2), "one token per row"),
        (dict(sampler="confidence", tokens_per_step=0), "tokens_per_step must be an integer >= 1"),
        (dict(top_p=0.0), "top_p"),
        (dict(input_ids=torch.tensor([[1, 5, 6, 7]])), "nothing to generate"),
        (dict(input_ids=INFILL, length=12), "length is the size of unconditional samples"),
        (dict(max_new_tokens=3), "describe input_ids"),
        (dict(input_ids=torch.tensor([[1, 40, MASK]])), "outside"),
        (dict(input_ids=torch.tensor([[1, 5, MASK]]), max_new_tokens=14), "exceed max_position_embeddings"),
    ]
    for kwargs, message in refusals:
        with pytest.raises(ValueError, match=message):
            model.sample(**kwargs)
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        model.sample(input_ids=torch.tensor([[1, 5, 0], [1, 5, 6]]), attention_mask=torch.tensor([[1, 1, 0], [1] * 3]),
                     max_new_tokens=2)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_a_single_masked_position_is_drawn_from_the_forward_pass_softmax(build, sampler):
    """One masked token between kept ones: every sampler must draw it from softmax(logits without the mask) of the
    forward pass over the same input (whatever the steps, the first reveal of a lone mask reads x_t as given). 4000
    draws; the frequencies must match within 4 standard errors of each probability."""
    model = build()
    prompt = torch.tensor([[1, 5, 7, 9, 2, MASK, 6, 7]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits[0, 5].double()
    logits[MASK] = float("-inf")
    probs = logits.softmax(-1)
    draws = model.sample(input_ids=prompt, num_samples=4000, seed=0,
                         **({"sampler": sampler, "num_steps": 1} if sampler.startswith("ddpm") else {"sampler": sampler}))
    frequencies = torch.bincount(draws[:, 5], minlength=40).double() / 4000
    tolerance = 4 * (probs * (1 - probs) / 4000).sqrt() + 1e-3
    assert ((frequencies - probs).abs() <= tolerance).all()


def test_mdlm_semi_autoregressive_strides_keep_the_prompt():
    model = mdlm()
    prompt = torch.tensor([[1, 5, 7, MASK, 9, 2, MASK, MASK]])
    sample = model.sample(input_ids=prompt, num_strides=2, stride_length=4, num_steps=4, seed=0)
    assert sample.shape == (1, 16) and not (sample == MASK).any()
    assert torch.equal(sample[0, [0, 1, 2, 4, 5]], prompt[0, [0, 1, 2, 4, 5]])
    with pytest.raises(ValueError, match="padding"):
        model.sample(input_ids=prompt, attention_mask=torch.tensor([[1] * 7 + [0]]), num_strides=1)


def test_confidence_reveals_the_most_probable_positions_first():
    """Hand-built logits: position 2 is near-certain of token 7, position 0 fairly sure of 3, position 1 flat. With
    two tokens per step, positions 2 and 0 are revealed with those tokens; position 1 stays masked."""
    noisy = torch.tensor([[MASK, MASK, MASK, 4]])
    logits = torch.zeros(1, 4, 40)
    logits[0, 2, 7], logits[0, 0, 3] = 30.0, 8.0
    revealed = reveal_most_confident(noisy, logits, 2, MASK, torch.Generator().manual_seed(0))
    assert revealed.tolist() == [[3, MASK, 7, 4]]


def test_first_hitting_times_follow_the_order_statistic():
    """The first of n unmasking times, each uniform on (0, t) (mask rate proportional to t), has mean t n / (n + 1)."""
    t, counts = torch.full((20000,), 0.8), torch.full((20000,), 5)
    times = first_hitting_times(t, counts, torch.Generator().manual_seed(0))
    assert (times < 0.8).all() and abs(times.mean().item() - 0.8 * 5 / 6) < 0.005
    assert torch.equal(first_hitting_times(t[:2], torch.tensor([0, 3]), None)[:1], t[:1])  # no mask: unchanged


def test_first_hitting_reveals_one_token_per_row_and_call():
    model = mdlm()
    calls = []
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].eq(MASK).sum(dim=1).tolist())
        return original(*args, **kwargs)

    model.forward = counting
    model.sample(input_ids=INFILL, sampler="first_hitting", seed=0)
    assert calls == [[3 - min(step, 3), 5 - step] for step in range(5)]


def test_bd3lm_logits_to_keep_are_the_last_positions_of_the_full_pass():
    model = bd3lm()
    ids = INFILL[:, :8]
    torch.testing.assert_close(model(input_ids=ids, logits_to_keep=4).logits, model(input_ids=ids).logits[:, -4:])
