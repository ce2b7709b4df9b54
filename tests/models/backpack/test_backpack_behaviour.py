"""Backpack behaviour beyond the conformance mixin: padding never leaks into α (left-padded rows equal unpadded
ones), the KV cache (forward continuation and `generate`), and the loss never counts padding."""

import pytest
import torch

from modeling.backpack import BackpackConfig, BackpackForCausalLM

VARIANTS = {"stanford": {}, "nano": dict(use_bias=False, sense_weight_bias=False, scale_sense_weights=False,
                                         scale_attn_by_inverse_layer_idx=False)}


def build(variant, **overrides):
    torch.manual_seed(0)
    config = BackpackConfig(vocab_size=90, pad_token_id=0, hidden_size=32, num_senses=4, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=40, sense_network=variant, dropout=0.0,
                            **VARIANTS[variant], **overrides)
    return BackpackForCausalLM(config).eval()


def ids(*shape, seed=0):
    return torch.randint(1, 90, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_equals_no_padding(variant):
    model = build(variant)
    row = ids(1, 9)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), row], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    alone, left = model(row), model(padded, attention_mask=mask)
    torch.testing.assert_close(left.logits[:, 4:], alone.logits, atol=1e-5, rtol=1e-5)
    alpha = left.contextualization
    assert alpha[:, :, 4:, :4].abs().max() == 0, "padding is never a source of the sense weights"
    torch.testing.assert_close(alpha[:, :, 4:].sum(-1), torch.ones(1, 4, 9))
    unmasked = model(padded).logits[:, 4:]
    assert not torch.allclose(unmasked, alone.logits, atol=1e-3), "without the mask the padding would leak"


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_continues_exactly_and_generate_agrees(variant):
    model = build(variant)
    tokens = ids(2, 16)
    full = model(tokens, use_cache=False).logits
    first = model(tokens[:, :10], use_cache=True)
    rest = model(tokens[:, 10:], cache=first.cache)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], dim=1), full, atol=1e-5, rtol=1e-5)
    assert rest.contextualization.shape == (2, 4, 6, 16)
    prompt, mask = tokens[:, :6].clone(), torch.ones(2, 6, dtype=torch.long)
    prompt[1, :2], mask[1, :2] = 0, 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, **kwargs)
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **kwargs))
    alone = model.generate(prompt[1:, 2:], max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[0, 4:], cached[1, 6:])


def test_loss_ignores_padding_and_shifts_once():
    model = build("stanford")
    tokens = ids(2, 8)
    labels = tokens.clone()
    labels[1, 5:] = -100
    out = model(tokens, labels=labels)
    targets = [(row, t) for row in range(2) for t in range(7) if labels[row, t + 1] != -100]
    expected = torch.stack([torch.nn.functional.cross_entropy(out.logits[row, t], tokens[row, t + 1])
                            for row, t in targets]).mean()
    torch.testing.assert_close(out.loss, expected)
    summed = model(tokens, labels=labels, num_items_in_batch=1).loss
    torch.testing.assert_close(summed, expected * len(targets))
