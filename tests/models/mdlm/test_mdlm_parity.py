"""Parity of MDLM with the golden outputs of the original code (`../shared/fixtures/mdlm`, SOURCE.md), through the
converter, in both checkpoint layouts; and the converter's strictness. Tolerances are SOURCE.md's."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_exports.__main__ import main as hub_exports_cli
from hub_exports.convert_diffusion import convert_diffusion
from hub_exports import load_checkpoint
from hub_exports.strict_mapping import ConversionError
from modeling.mdlm import masked_diffusion_nelbo, subs_log_probs
from tests.modeling_common import tiny_tokenizer

MASK = 127
LOGITS = dict(atol=5e-5, rtol=1e-5)
LOSS = dict(atol=1e-5, rtol=1e-6)


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "mdlm"


@pytest.fixture(scope="module")
def io(fixture_dir):
    return load_file(fixture_dir / "io.safetensors")


@pytest.fixture(scope="module")
def hub_model(fixture_dir):
    return convert_diffusion(fixture_dir / "hf", mask_token_id=MASK)


def test_logits_and_subs(hub_model, io):
    with torch.no_grad():
        logits = hub_model(input_ids=io["xt"], timesteps=io["t"]).logits
    torch.testing.assert_close(logits, io["logits"], **LOGITS)
    log_probs = subs_log_probs(logits, io["xt"], MASK)
    finite = io["log_probs_subs"] > -1e5  # the original's -1e6 sentinels are -inf here
    assert torch.equal(torch.isfinite(log_probs), finite)
    torch.testing.assert_close(log_probs[finite], io["log_probs_subs"][finite], **LOGITS)


def test_nelbo_for_the_fixed_noise(hub_model, io):
    """t and x_t are re-derived from the fixture's raw draws exactly as the original does, then the loss."""
    t = (1 - 1e-3) * ((io["u_t"] / 3 + torch.arange(3) / 3) % 1) + 1e-3
    move_chance, weight = hub_model.noise_schedule(t)
    noisy = torch.where(io["u_mask"] < move_chance[:, None], MASK, io["x0"])
    assert torch.equal(t, io["t"]) and torch.equal(noisy, io["xt"])
    torch.testing.assert_close(weight, io["loss_weight"], atol=0, rtol=0)
    labels = io["x0"].masked_fill(io["attention_mask"] == 0, -100)
    with torch.no_grad():
        output = hub_model(input_ids=noisy, timesteps=t, labels=labels)
    torch.testing.assert_close(output.loss, io["loss"], **LOSS)
    terms = masked_diffusion_nelbo(output.logits, noisy, io["x0"], weight[:, None], MASK)
    torch.testing.assert_close(terms, io["loss_per_token"], **LOSS)
    torch.testing.assert_close(terms * io["attention_mask"], io["nlls"], **LOSS)


def test_time_conditioned_logits(fixture_dir, io):
    model = convert_diffusion(fixture_dir / "hf", mask_token_id=MASK)
    model.config.time_conditioning = True
    with torch.no_grad():
        from_t = model(input_ids=io["xt"], timesteps=io["t"]).logits
        from_sigma = model(input_ids=io["xt"], sigma=io["sigma"]).logits
    torch.testing.assert_close(from_t, io["logits_timecond"], **LOGITS)
    torch.testing.assert_close(from_sigma, io["logits_timecond"], **LOGITS)


def test_lightning_checkpoint_ema_and_live_weights(fixture_dir, hub_model, io):
    ema = convert_diffusion(fixture_dir / "lightning" / "mdlm_tiny.ckpt", mask_token_id=MASK)
    for (name, ours), theirs in zip(ema.state_dict().items(), hub_model.state_dict().values()):
        assert torch.equal(ours, theirs), f"EMA weights differ from the Hub file at {name}"
    live = convert_diffusion(fixture_dir / "lightning" / "mdlm_tiny.ckpt", mask_token_id=MASK, weights="live")
    with torch.no_grad():
        torch.testing.assert_close(live(input_ids=io["xt"]).logits, io["logits_live_weights"], **LOGITS)
        assert (live(input_ids=io["xt"]).logits - io["logits"]).abs().max() > 1e-2  # EMA and live really differ


def test_mask_id_comes_from_the_tokenizer_or_is_stated(fixture_dir):
    with pytest.raises(ValueError, match="mask id is not stored"):
        convert_diffusion(fixture_dir / "hf")
    no_mask = tiny_tokenizer(127, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]"))  # GPT-2-like: mask appended
    assert convert_diffusion(fixture_dir / "hf", tokenizer=no_mask).config.mask_token_id == 127
    with pytest.raises(ValueError, match="contradicts"):
        convert_diffusion(fixture_dir / "hf", tokenizer=no_mask, mask_token_id=3)


@pytest.fixture
def copied_hub(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir / "hf", tmp_path / "hf")
    return tmp_path / "hf"


def test_unknown_and_missing_keys_are_named(copied_hub):
    state = load_file(copied_hub / "model.safetensors")
    save_file({**state, "backbone.blocks.0.attn_gate.weight": torch.zeros(2)}, copied_hub / "model.safetensors")
    with pytest.raises(ValueError, match=r"Unknown keys.*attn_gate"):
        convert_diffusion(copied_hub, mask_token_id=MASK)
    del state["backbone.blocks.1.mlp.2.bias"]
    save_file(state, copied_hub / "model.safetensors")
    with pytest.raises(ConversionError, match=r"lacks tensors for \['mdlm\.layers\.1\.mlp\.2\.bias'\]"):
        convert_diffusion(copied_hub, mask_token_id=MASK)


def test_missing_config_field_is_named(copied_hub):
    config = json.loads((copied_hub / "config.json").read_text())
    del config["cond_dim"]
    (copied_hub / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cond_dim"):
        convert_diffusion(copied_hub, mask_token_id=MASK)


def test_wrong_rotary_buffer_is_refused(copied_hub):
    state = load_file(copied_hub / "model.safetensors")
    state["backbone.rotary_emb.inv_freq"] = state["backbone.rotary_emb.inv_freq"] * 2
    save_file(state, copied_hub / "model.safetensors")
    with pytest.raises(ValueError, match="inv_freq"):
        convert_diffusion(copied_hub, mask_token_id=MASK)


def test_pickled_code_is_never_executed(fixture_dir, tmp_path):
    checkpoint = torch.load(fixture_dir / "lightning" / "mdlm_tiny.ckpt", weights_only=True)
    checkpoint["payload"] = shutil.rmtree
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(ConversionError, match="refused for safety.*the global shutil.rmtree.*Hydra config") as refused:
        convert_diffusion(tmp_path / "evil.ckpt", mask_token_id=MASK)
    assert "weights_only" not in str(refused.value)  # torch's advice is to turn the safety off


def test_convert_cli_exports_a_verified_repo(fixture_dir, io, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer(127, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")).save_pretrained(tokenizer_dir)
    code = hub_exports_cli(["convert", "mdlm", str(fixture_dir / "lightning" / "mdlm_tiny.ckpt"),
                            str(tmp_path / "out"), "--tokenizer", str(tokenizer_dir)])
    assert code == 0, capsys.readouterr().err
    assert "PASSED" in caplog.text
    exported = load_checkpoint(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=io["xt"]).logits, io["logits"], **LOGITS)
