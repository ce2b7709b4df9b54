"""Behaviour of the modded GPT beyond the conformance mixin: the original's init, generation with and without the KV
cache, document masking, sliding windows, padding on either side, the rotary sign conventions and the soft-caps."""

import math

import pytest
import torch

from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM, ModdedGptForSequenceClassification
from tests.models.modded_gpt.test_modeling_modded_gpt import TINY

EOT = TINY["eot_token_id"]


def build(model_class=ModdedGptForCausalLM, **overrides):
    torch.manual_seed(0)
    return model_class(ModdedGptConfig(**{**TINY, "zero_init_projections": False, **overrides})).eval()


def ids(*shape, seed=0):
    return torch.randint(1, EOT, shape, generator=torch.Generator().manual_seed(seed))


def test_default_layout_is_valid_at_every_depth():
    for depth in range(1, 25):
        config = ModdedGptConfig(**{**TINY, "num_hidden_layers": depth})
        assert config.layers_without_attention == ([7] if depth == 12 else [])
        assert len(config.skip_connections) == depth // 2 and config.num_scalars == 5 * depth


def test_default_init_is_the_originals():
    model = ModdedGptForCausalLM(ModdedGptConfig(**TINY))
    for layer in model.model.layers:
        assert layer.mlp.down_proj.weight.abs().max() == 0
        if layer.attn is not None:
            assert layer.attn.o_proj.weight.abs().max() == 0
            bound = 3 ** 0.5 * 0.5 * TINY["hidden_size"] ** -0.5
            assert 0.9 * bound < layer.attn.qkv_proj.weight.abs().max() <= bound
    assert model.lm_head.weight.abs().max() == 0
    assert abs(model.model.embed_tokens.weight.std().item() - 1) < 0.05
    n = TINY["num_hidden_layers"]
    scalars = model.model.scalars
    assert torch.equal(scalars[:n], torch.ones(n))
    assert torch.equal(scalars[n:3 * n], torch.tensor([1.0, 0.0]).repeat(n))
    assert torch.equal(scalars[3 * n:], torch.full((2 * n,), 0.5))
    assert model.model.layers[7].attn is None
    assert torch.equal(model(ids(1, 5)).logits, torch.full((1, 5, 128), 15.0))  # 30·sigmoid(0)


@pytest.mark.parametrize("left_pad", [False, True])
def test_generate_equal_with_and_without_cache(left_pad):
    model = build(max_position_embeddings=40)
    prompt = ids(2, 9)
    prompt[0, 4] = EOT  # a document boundary inside the prompt
    mask = torch.ones_like(prompt)
    if left_pad:
        prompt[1, :3], mask[1, :3] = 0, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    # Row 1's continuation does not depend on its padding: the unpadded prompt gives the same tokens.
    if left_pad:
        alone = model.generate(prompt[1:, 3:], max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert torch.equal(alone[0, 6:], cached[1, 9:])


def test_cache_continues_exactly():
    model = build()
    tokens = ids(2, 22)
    tokens[:, 10] = EOT
    full = model(tokens, use_cache=False).logits
    first = model(tokens[:, :13], use_cache=True)
    documents = (tokens == EOT).cumsum(-1)
    rest = model(tokens[:, 13:], cache=first.cache, document_ids=documents).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="document_ids"):
        model(tokens[:, 13:], cache=model(tokens[:, :13], use_cache=True).cache)


def test_documents_do_not_see_each_other():
    """Everything from an EOT on is independent of what came before it."""
    model = build(sliding_window_num_blocks=None)
    a, b = ids(1, 12, seed=1), ids(1, 12, seed=2)
    a[0, 7] = b[0, 7] = EOT
    b[0, 7:] = a[0, 7:]
    la, lb = model(a).logits, model(b).logits
    assert not torch.allclose(la[0, :7], lb[0, :7])
    # Identical positions and document: equal up to the batch-shape rounding of the kernels.
    torch.testing.assert_close(la[0, 7:], lb[0, 7:], atol=1e-5, rtol=1e-5)
    off = build(sliding_window_num_blocks=None, eot_token_id=None)
    assert not torch.allclose(off(a).logits[0, 7:], off(b).logits[0, 7:])


def test_window_is_block_granular():
    """One attention layer, 4-token blocks, long window 2 blocks (short 1): query 12 (block 3) sees keys 8..12 with
    the long window and 12 alone with the short one, whatever the token distance."""
    single = dict(num_hidden_layers=1, max_position_embeddings=16)
    base = ids(1, 16, seed=3)
    early, recent = base.clone(), base.clone()
    early[0, :8] = ids(1, 8, seed=4)
    recent[0, 8:12] = ids(1, 4, seed=5)
    for windows, unchanged, changed in ((["long"], early, recent), (["short"], recent, None)):
        model = build(**single, attention_windows=windows)
        reference = model(base).logits[0, 12:]
        torch.testing.assert_close(model(unchanged).logits[0, 12:], reference, atol=1e-5, rtol=1e-5)
        if changed is not None:
            assert not torch.allclose(model(changed).logits[0, 12:], reference)
        assert not torch.allclose(model(unchanged).logits[0, 8:12], model(base).logits[0, 8:12])
    unwindowed = build(**single, sliding_window_num_blocks=None)
    assert not torch.allclose(unwindowed(early).logits[0, 12:], unwindowed(base).logits[0, 12:])


def test_classification_left_and_right_padding_agree():
    model = build(ModdedGptForSequenceClassification)
    rows = [ids(1, 7, seed=6)[0], ids(1, 4, seed=7)[0]]
    right = torch.zeros(2, 7, dtype=torch.long)
    left = torch.zeros(2, 7, dtype=torch.long)
    right_mask, left_mask = torch.zeros_like(right), torch.zeros_like(left)
    for i, row in enumerate(rows):
        right[i, :len(row)], right_mask[i, :len(row)] = row, 1
        left[i, 7 - len(row):], left_mask[i, 7 - len(row):] = row, 1
    from_right = model(right, attention_mask=right_mask).logits
    from_left = model(left, attention_mask=left_mask).logits
    torch.testing.assert_close(from_left, from_right, atol=1e-5, rtol=1e-5)
    alone = torch.stack([model(row[None]).logits[0] for row in rows])
    torch.testing.assert_close(from_right, alone, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([2, 0])
    loss = model(right, attention_mask=right_mask, labels=labels).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(from_right, labels))
    with pytest.raises(ValueError, match="num_labels"):
        model(right, attention_mask=right_mask, labels=torch.tensor([3, 0]))


def test_rotary_conventions_are_mirror_images():
    """transformers' sign equals the speedrun's with the second half of every Q and K head negated."""
    modded, hf = build(), build(rotary_convention="hf")
    hidden, heads, head_dim = TINY["hidden_size"], TINY["num_attention_heads"], TINY["head_dim"]
    flip = torch.ones(3 * hidden)
    for head in range(2 * heads):  # Q and K heads
        flip[head * head_dim + head_dim // 2:(head + 1) * head_dim] = -1
    with torch.no_grad():
        for layer in hf.model.layers:
            if layer.attn is not None:
                layer.attn.qkv_proj.weight.mul_(flip[:, None])
    tokens = ids(2, 11)
    torch.testing.assert_close(hf(tokens).logits, modded(tokens).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(build(rotary_convention="hf")(tokens).logits, modded(tokens).logits)


def test_soft_caps():
    tokens = ids(1, 6)
    z = build(logit_softcap="none").capped_logits(build().model(tokens).last_hidden_state)
    sigmoid = build(logit_softcap_cap=30.0, logit_softcap_temperature=7.5)
    torch.testing.assert_close(sigmoid(tokens).logits, 30 * torch.sigmoid(z / 7.5))
    isru = build(logit_softcap="isru", logit_softcap_cap=15.0, logit_softcap_temperature=None)
    torch.testing.assert_close(isru(tokens).logits, 15 * z / torch.sqrt(z ** 2 + 225))
    assert build().config.logit_softcap_temperature == pytest.approx(7.5 * math.sqrt(TINY["hidden_size"]))


def test_labels_outside_the_vocabulary_are_refused():
    model = build()
    tokens = ids(1, 6)
    labels = tokens.clone()
    labels[0, 3] = 100  # a padding row of the head, not a token
    with pytest.raises(ValueError, match="labels"):
        model(tokens, labels=labels)
    labels[0, 3] = -100
    assert torch.isfinite(model(tokens, labels=labels).loss)
