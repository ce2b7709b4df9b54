"""Parity of converted Backpack checkpoints with the golden outputs of both original codes (`../shared/fixtures/
backpack_gpt2`, `../shared/fixtures/nanobackpacklm/{nobias,bias}`, SOURCE.md), and the converter's strictness.
Tolerances are SOURCE.md's: tensors 1e-4, loss 1e-5."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hub_exports.__main__ import main as hub_exports_cli
from hub_exports.convert_backpack import convert_backpack
from tests.modeling_common import tiny_tokenizer

TENSOR = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fixtures(shared_dir):
    return shared_dir / "fixtures"


def test_backpack_gpt2_parity(fixtures):
    model, detected = convert_backpack(fixtures / "backpack_gpt2")
    assert detected == "backpack-gpt2" and model.config.scale_attn_by_inverse_layer_idx
    inputs = load_file(fixtures / "backpack_gpt2" / "inputs.safetensors")
    reference = load_file(fixtures / "backpack_gpt2" / "outputs.safetensors")
    ids = inputs["input_ids"]
    with torch.no_grad():
        out = model(ids)
        torch.testing.assert_close(out.logits, reference["logits"], **TENSOR)
        torch.testing.assert_close(out.contextualization, reference["contextualization"], **TENSOR)
        torch.testing.assert_close(out.senses, reference["senses"], **TENSOR)
        trunk = model.backpack(ids)
        torch.testing.assert_close(trunk.last_hidden_state, reference["backpack_hidden_states"], **TENSOR)
        torch.testing.assert_close(trunk.contextual_hidden_state, reference["gpt2_last_hidden_state"], **TENSOR)
        assert abs(model(ids, labels=inputs["labels"]).loss - reference["loss"]) <= 1e-5
        torch.testing.assert_close(model(ids, position_ids=inputs["position_ids_offset"]).logits,
                                   reference["logits_position_ids_offset"], **TENSOR)
        torch.testing.assert_close(model(ids, contextualization=reference["custom_contextualization"]).logits,
                                   reference["logits_custom_contextualization"], **TENSOR)
        vocab = torch.arange(model.config.vocab_size)[None]
        torch.testing.assert_close(model.backpack.sense_vectors(vocab)[0].transpose(0, 1), reference["vocab_senses"],
                                   **TENSOR)
        # With the padding mask, real positions keep the reference values (right padding cannot change them).
        masked = model(ids, attention_mask=inputs["attention_mask"])
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(masked.logits[real], reference["logits"][real], **TENSOR)


def test_inverse_layer_index_scaling_matters(fixtures):
    """Without GPT-2's division of block i's scores by i + 1 (what transformers 4.57's SDPA path silently did) the
    logits move far beyond the tolerance."""
    model, _ = convert_backpack(fixtures / "backpack_gpt2")
    reference = load_file(fixtures / "backpack_gpt2" / "outputs.safetensors")["logits"]
    for layer in model.backpack.layers:
        layer.attn.scale = layer.attn.head_dim ** -0.5
    with torch.no_grad():
        logits = model(load_file(fixtures / "backpack_gpt2" / "inputs.safetensors")["input_ids"]).logits
    assert (logits - reference).abs().max() > 1e-2


@pytest.mark.parametrize("variant", ["nobias", "bias"])
def test_nanobackpacklm_parity(fixtures, variant):
    model, detected = convert_backpack(fixtures / "nanobackpacklm" / variant / "ckpt.pt")
    assert detected == "nanobackpacklm" and model.config.use_bias == (variant == "bias")
    assert model.config.num_hidden_layers == 2, "n_layer 3 builds n_layer - 1 contextualization blocks"
    inputs = load_file(fixtures / "nanobackpacklm" / "inputs.safetensors")
    reference = load_file(fixtures / "nanobackpacklm" / variant / "outputs.safetensors")
    ids, targets = inputs["input_ids"], inputs["targets"]
    with torch.no_grad():
        out = model(ids)
        torch.testing.assert_close(out.logits, reference["logits"], **TENSOR)
        torch.testing.assert_close(out.contextualization, reference["contextualization"], **TENSOR)
        torch.testing.assert_close(out.senses, reference["sense_x"].permute(0, 3, 1, 2), **TENSOR)  # (B,T,d,k)
        trunk = model.backpack(ids)
        torch.testing.assert_close(trunk.last_hidden_state, reference["o"], **TENSOR)
        torch.testing.assert_close(trunk.contextual_hidden_state, reference["contextualization_hidden"], **TENSOR)
        contributions = torch.einsum("bkij,bkjd->bikd", out.contextualization, out.senses)
        torch.testing.assert_close(contributions, reference["sense_contributions"], **TENSOR)
        loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        assert abs(loss - reference["loss"]) <= 1e-5
        # The HF convention (labels = the input ids, -100 where the original's target is -1, shifted inside)
        # gives the original's loss over the positions that have their target inside the row.
        labels = ids.clone()
        labels[:, 1:] = labels[:, 1:].masked_fill(targets[:, :-1] == -1, -100)
        expected = F.cross_entropy(reference["logits"][:, :-1].flatten(0, 1), targets[:, :-1].flatten(),
                                   ignore_index=-1)
        assert abs(model(ids, labels=labels).loss - expected) <= 1e-5
        vocab = torch.arange(model.config.vocab_size)[None]
        torch.testing.assert_close(model.backpack.sense_vectors(vocab)[0].transpose(0, 1), reference["vocab_senses"],
                                   **TENSOR)


def test_aliases_unknown_and_missing_keys(fixtures, tmp_path):
    folder = tmp_path / "backpack"
    shutil.copytree(fixtures / "backpack_gpt2", folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    for key in ("backpack.word_embeddings.weight", "lm_head.weight", "backpack.position_embeddings.weight"):
        del state[key]  # one key per aliased tensor is enough
    torch.save(state, folder / "pytorch_model.bin")
    reference, _ = convert_backpack(fixtures / "backpack_gpt2")
    model, _ = convert_backpack(folder)
    assert torch.equal(model.backpack.embed_tokens.weight, reference.backpack.embed_tokens.weight)
    torch.save({**state, "lm_head.weight": state["backpack.gpt2_model.wte.weight"] + 1}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lm_head.weight should alias"):
        convert_backpack(folder)
    torch.save({**state, "backpack.extra.weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unknown keys.*\['backpack\.extra\.weight'\]"):
        convert_backpack(folder)
    del state["backpack.sense_weight_net.c_attn.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"lacks tensors for \['backpack\.sense_weights\.bias'\]"):
        convert_backpack(folder)
    checkpoint = torch.load(fixtures / "nanobackpacklm" / "nobias" / "ckpt.pt", weights_only=True)
    checkpoint["model"]["_orig_mod.backpack.unknown"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"unknown keys in the nanobackpacklm checkpoint: \['backpack\.unknown'\]"):
        convert_backpack(tmp_path / "ckpt.pt")


def test_cli_converts_and_verifies_both_formats(fixtures, tmp_path, capsys):
    tokenizer = tiny_tokenizer(257, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]"))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    for name, source in (("stanford", fixtures / "backpack_gpt2"),
                         ("nano", fixtures / "nanobackpacklm" / "bias" / "ckpt.pt")):
        code = hub_exports_cli(["convert", "backpack", str(source), str(tmp_path / name), "--tokenizer",
                                str(tmp_path / "tokenizer")])
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert "Exported and verified" in printed and "Converted" in printed
