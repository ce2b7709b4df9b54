"""Parity of converted modded-nanogpt checkpoints with the golden outputs of the original code
(`../shared/fixtures/modded_gpt`, SOURCE.md), in both checkpoint formats. Tolerances are SOURCE.md §8's."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hub_exports.convert_modded_gpt import convert_modded_gpt

CAPPED = {"small": 1e-4, "medium": 5e-4}
RAW = {"small": 1e-3, "medium": 5e-4}
LOSS = 1e-5
ROWS = [0, 1, 59, 60, 61, 99, 100, 101, 127, 128, 129, 255, 256, 257, 383]  # SOURCE.md §7
FIXTURE = dict(tokenizer_vocab_size=321, eot_token_id=320, head_dim=32, sliding_window_num_blocks=2,
               max_position_embeddings=384)


@pytest.fixture(scope="module")
def inputs(fixture_dir):
    tensors = load_file(fixture_dir / "inputs.safetensors")
    return tensors["input_ids"].long()[None], tensors["target_ids"]


def convert(fixture_dir, checkpoint_format, **overrides):
    model, detected = convert_modded_gpt(fixture_dir / f"ckpt_{checkpoint_format}.pt", **{**FIXTURE, **overrides})
    assert detected == checkpoint_format
    return model


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_logits_loss_and_hidden_states(fixture_dir, inputs, checkpoint_format):
    model = convert(fixture_dir, checkpoint_format)
    reference = load_file(fixture_dir / f"outputs_{checkpoint_format}.safetensors")
    input_ids, targets = inputs
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True)
        head = model.lm_head.weight.bfloat16().float() if checkpoint_format == "medium" else model.lm_head.weight
        raw = F.linear(model.model(input_ids).last_hidden_state, head)[0]
    assert max_diff(out.logits[0], reference["logits_capped"]) <= CAPPED[checkpoint_format]
    assert max_diff(raw, reference["logits_raw"]) <= RAW[checkpoint_format]
    assert abs(F.cross_entropy(out.logits[0], targets) - reference["loss"]) <= LOSS
    assert max_diff(out.hidden_states[0][0, ROWS], reference["x0_rows"]) <= 1e-4
    for layer in range(model.config.num_hidden_layers):
        assert max_diff(out.hidden_states[layer + 1][0, ROWS], reference[f"block{layer:02d}_out_rows"]) <= 1e-4


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_other_windows(fixture_dir, inputs, checkpoint_format):
    reference = load_file(fixture_dir / f"outputs_{checkpoint_format}.safetensors")
    input_ids, targets = inputs
    for window, key in ((3, "loss_window3"), (14, "loss_window14")):
        model = convert(fixture_dir, checkpoint_format, sliding_window_num_blocks=window)
        with torch.no_grad():
            assert abs(F.cross_entropy(model(input_ids).logits[0], targets) - reference[key]) <= LOSS
    # Negative control: without the window (document-causal only) the window-2 reference is far away (SOURCE §8).
    with torch.no_grad():
        unwindowed = convert(fixture_dir, checkpoint_format, sliding_window_num_blocks=None)(input_ids).logits[0]
    assert max_diff(unwindowed, reference["logits_capped"]) > 1.0


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_causal_lm_loss_shifts_labels_once(fixture_dir, inputs, checkpoint_format):
    """`labels=input_ids` is the original's loss on the golden logits over the positions that have a next token."""
    reference = load_file(fixture_dir / f"outputs_{checkpoint_format}.safetensors")
    input_ids, targets = inputs
    with torch.no_grad():
        loss = convert(fixture_dir, checkpoint_format)(input_ids, labels=input_ids).loss
    expected = F.cross_entropy(reference["logits_capped"][:-1], targets[:-1])
    assert abs(loss - expected) <= LOSS


def test_medium_head_is_rounded_to_bf16(fixture_dir, inputs):
    """The medium format computes with the bf16 copy of its fp32 head: without the rounding the raw logits move by
    far more than the tolerance (SOURCE §9.2)."""
    reference = load_file(fixture_dir / "outputs_medium.safetensors")
    model = convert(fixture_dir, "medium")
    model.config.round_head_weight_to_bf16 = False
    with torch.no_grad():
        raw = F.linear(model.model(inputs[0]).last_hidden_state, model.lm_head.weight)[0]
    assert max_diff(raw, reference["logits_raw"]) > 1e-2


def test_document_and_padding_batch(fixture_dir, inputs):
    """The fixture's sequence in a batch, left-padded by 5 (pads carry the EOT id) next to itself unpadded: the
    real positions equal the unbatched reference (positions come from the attention mask)."""
    reference = load_file(fixture_dir / "outputs_small.safetensors")
    model = convert(fixture_dir, "small", max_position_embeddings=389)
    input_ids = inputs[0]
    padded = torch.cat([torch.full((1, 5), 320), input_ids], dim=1)
    batch = torch.cat([padded, torch.cat([input_ids, torch.full((1, 5), 320)], dim=1)])
    mask = torch.ones_like(batch)
    mask[0, :5] = 0
    mask[1, -5:] = 0
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
    assert max_diff(logits[0, 5:], reference["logits_capped"]) <= CAPPED["small"]
    assert max_diff(logits[1, :-5], reference["logits_capped"]) <= CAPPED["small"]
