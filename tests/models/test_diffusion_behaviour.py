"""Behaviour of the diffusion models beyond the conformance mixin: SUBS, the NELBO's handling of padding, the
samplers (mask-free, reproducible, cache-exact) and the KV cache of BD3-LM."""

import pytest
import torch

from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM, Bd3lmKVCache
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM, subs_log_probs

SIZES = dict(vocab_size=40, mask_token_id=39, pad_token_id=0, bos_token_id=1, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0)


def mdlm(**overrides):
    torch.manual_seed(0)
    return MdlmForMaskedDiffusionLM(MdlmConfig(**{**SIZES, "zero_init_modulation": False, **overrides})).eval()


def bd3lm(**overrides):
    torch.manual_seed(0)
    return Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**{**SIZES, "block_size": 4, "zero_init_modulation": False,
                                                    **overrides})).eval()


def test_default_init_is_adaln_zero():
    model = MdlmForMaskedDiffusionLM(MdlmConfig(**SIZES))
    assert all(not layer.modulation.weight.any() for layer in model.mdlm.layers)
    assert not model.output_layer.lm_head.weight.any() and not model.output_layer.modulation.weight.any()
    logits = model(input_ids=torch.tensor([[1, 39, 5]])).logits
    assert not logits.any(), "adaLN-Zero: the denoiser starts at zero logits"


def test_subs_never_predicts_the_mask_and_copies_unmasked_tokens():
    model = mdlm()
    noisy = torch.tensor([[3, 39, 7, 39]])
    log_probs = subs_log_probs(model(input_ids=noisy).logits, noisy, 39)
    assert torch.isneginf(log_probs[..., 39]).all()
    assert log_probs[0, 0, 3] == 0 and torch.isneginf(log_probs[0, 0, :3]).all()
    torch.testing.assert_close(log_probs[0, 1].exp().sum(), torch.tensor(1.0))


@pytest.mark.parametrize("build", [mdlm, bd3lm])
def test_nelbo_excludes_padding(build):
    """Appending padding (attention 0, labels -100) leaves the loss of the real tokens exactly as it was: pads are
    neither attended nor counted in the normaliser, even when they sit at masked positions."""
    model = build()
    clean = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    noisy = torch.tensor([[1, 39, 6, 39, 8, 39, 10, 39]])
    timesteps = torch.tensor([0.5]) if build is mdlm else torch.full((1, 8), 0.5)
    reference = model(input_ids=noisy, timesteps=timesteps, labels=clean).loss
    padded_noisy = torch.cat((noisy, torch.tensor([[39, 0, 39, 0]])), dim=1)  # masked pads too
    padded_labels = torch.cat((clean, torch.full((1, 4), -100)), dim=1)
    attention = torch.cat((torch.ones(1, 8), torch.zeros(1, 4)), dim=1).long()
    padded_t = timesteps if build is mdlm else torch.full((1, 12), 0.5)
    padded = model(input_ids=padded_noisy, attention_mask=attention, timesteps=padded_t, labels=padded_labels).loss
    torch.testing.assert_close(padded, reference, atol=1e-6, rtol=1e-6)
    unmasked_only = model(input_ids=clean, timesteps=timesteps, labels=clean).loss
    assert unmasked_only == 0, "SUBS: unmasked tokens contribute exactly 0"


@pytest.mark.parametrize("build", [mdlm, bd3lm])
def test_labels_must_be_clean_ids(build):
    model = build()
    noisy = torch.tensor([[1, 39, 6]])
    with pytest.raises(ValueError, match="clean ids"):
        model(input_ids=noisy, timesteps=torch.tensor([0.5]), labels=torch.tensor([[1, 39, 6]]))
    with pytest.raises(ValueError, match="timesteps"):
        model(input_ids=noisy, labels=torch.tensor([[1, 5, 6]]))


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm_cache"])
def test_mdlm_sampler_is_mask_free_and_reproducible(sampler):
    model = mdlm()
    first = model.sample(num_samples=3, length=16, num_steps=10, sampler=sampler, seed=3)
    assert first.shape == (3, 16) and not (first == 39).any() and first.min() >= 0
    assert torch.equal(first, model.sample(num_samples=3, length=16, num_steps=10, sampler=sampler, seed=3))
    assert not torch.equal(first, model.sample(num_samples=3, length=16, num_steps=10, sampler=sampler, seed=4))


def test_ddpm_cache_draws_the_same_samples_as_ddpm():
    """The cache only skips denoiser calls whose input did not change, so with the same seed the draws agree."""
    model = mdlm()
    assert torch.equal(model.sample(num_samples=2, length=16, num_steps=64, sampler="ddpm", seed=1),
                       model.sample(num_samples=2, length=16, num_steps=64, sampler="ddpm_cache", seed=1))


def test_mdlm_semi_autoregressive_sampling_extends_past_the_model_length():
    model = mdlm()
    sample = model.sample(num_samples=2, length=16, num_steps=8, num_strides=2, stride_length=4, seed=0)
    assert sample.shape == (2, 24) and not (sample == 39).any()
    with pytest.raises(ValueError, match="ddpm_cache"):
        mdlm(time_conditioning=True).sample(num_steps=2, sampler="ddpm_cache")


def test_bd3lm_kv_cache_is_exact():
    """Denoising a block after cached clean blocks gives the logits of the uncached pass over the whole prefix."""
    model = bd3lm()
    prefix = torch.randint(1, 39, (2, 8), generator=torch.Generator().manual_seed(0))
    block = torch.tensor([[39, 5, 39, 7], [39, 39, 39, 39]])
    cache = Bd3lmKVCache()
    model(input_ids=prefix[:, :4], kv_cache=cache, update_cache=True)
    model(input_ids=prefix[:, 4:], kv_cache=cache, update_cache=True)
    assert cache.length == 8
    cached = model(input_ids=block, kv_cache=cache).logits
    assert cache.length == 8, "a noisy block must not enter the cache"
    full = model(input_ids=torch.cat((prefix, block), dim=1)).logits[:, -4:]
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_generation_pass_equals_the_training_pass_on_clean_context():
    """The x_t half of the training pass sees clean earlier blocks: the generation pass over [clean prefix, noisy
    block] must give the same logits for that block."""
    model = bd3lm()
    clean = torch.randint(1, 39, (1, 12), generator=torch.Generator().manual_seed(1))
    noisy = clean.clone()
    noisy[0, 8:] = torch.tensor([39, 3, 39, 39])
    training = model(input_ids=noisy, clean_ids=clean).logits[:, 8:]
    generation = model(input_ids=torch.cat((clean[:, :8], noisy[:, 8:]), dim=1)).logits[:, 8:]
    torch.testing.assert_close(training, generation, atol=1e-5, rtol=1e-5)


def test_bd3lm_sampler_with_and_without_cache():
    model = bd3lm()
    cached = model.sample(num_samples=2, length=16, num_steps=4, top_p=0.9, seed=5)
    assert cached.shape == (2, 16) and not (cached == 39).any()
    assert torch.equal(cached, model.sample(num_samples=2, length=16, num_steps=4, top_p=0.9, seed=5, use_cache=False))
    prefix = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.sample(num_samples=2, input_ids=prefix, max_new_tokens=4, seed=0)[:, :4], prefix.expand(2, -1))
    with pytest.raises(ValueError, match="multiple of block_size"):
        model.sample(length=10)


def test_sampling_interval_is_validated():
    model = bd3lm()
    model.set_sampling_interval(0.2, 0.7)
    assert model.sampling_interval == pytest.approx((0.2, 0.7)) and model.config.sampling_eps_max == 0.7
    with pytest.raises(ValueError, match="0 < min < max <= 1"):
        model.set_sampling_interval(0.7, 0.2)
    model.sampling_eps_max.fill_(1.5)  # e.g. a tampered checkpoint
    with pytest.raises(ValueError, match="0 < min < max <= 1"):
        model.sampling_interval


@pytest.mark.parametrize("build", [mdlm, bd3lm])
def test_a_bfloat16_model_runs_and_keeps_its_sampling_interval_in_float32(build):
    model = build()
    reference = model(input_ids=torch.tensor([[1, 39, 5, 6]])).logits
    model.to(torch.bfloat16)
    logits = model(input_ids=torch.tensor([[1, 39, 5, 6]])).logits
    assert logits.dtype == torch.bfloat16 and (logits.float() - reference).abs().max() < 0.1
    assert not (model.sample(num_samples=2, length=8, num_steps=4, seed=0) == 39).any()
    if build is bd3lm:
        model.set_sampling_interval(0.3, 0.8)
        model.to(torch.bfloat16)
        assert model.sampling_eps_min.dtype == torch.float32 and model.sampling_interval == pytest.approx((0.3, 0.8))


def test_bd3lm_samples_start_with_the_bos_training_never_masked():
    model = bd3lm()
    assert (model.sample(num_samples=3, length=8, seed=2)[:, 0] == 1).all()
    model.config.bos_token_id = None
    with pytest.raises(ValueError, match="bos_token_id"):
        model.sample(length=8)
    assert bd3lm(ignore_bos=False).sample(length=8).shape == (1, 8)


def test_time_conditioned_bd3lm_samples_without_the_cache():
    model = bd3lm(time_conditioning=True)
    with pytest.raises(ValueError, match="use_cache=False"):
        model.sample(length=8)
    assert not (model.sample(length=8, use_cache=False, seed=0) == 39).any()
