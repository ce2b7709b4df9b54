"""Parity of BD3-LM with the golden outputs of the original code (`../shared/fixtures/bd3lm`, SOURCE.md), through the
converter, in both checkpoint layouts; the sampling-interval buffers; and the converter's strictness."""

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_exports.__main__ import main as hub_exports_cli
from hub_exports.convert_diffusion import convert_diffusion
from modeling.bd3lm import block_diffusion_mask
from modeling.mdlm import masked_diffusion_nelbo
from tests.modeling_common import tiny_tokenizer

MASK = 127
LOGITS = dict(atol=5e-5, rtol=1e-5)
LOSS = dict(atol=1e-5, rtol=1e-6)
INTERVALS = {"train": (0.3, 0.8), "eval": (1e-3, 1.0)}  # the buffers' values, and the NELBO interval


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "bd3lm"


@pytest.fixture(scope="module")
def io(fixture_dir):
    return load_file(fixture_dir / "io.safetensors")


@pytest.fixture(scope="module")
def hub_model(fixture_dir):
    return convert_diffusion(fixture_dir / "hf", mask_token_id=MASK)


def test_block_masks(io):
    assert torch.equal(block_diffusion_mask(32, 4), io["block_diff_mask_bs4"])
    assert torch.equal(block_diffusion_mask(32, 8), io["block_diff_mask_bs8"])


@pytest.mark.parametrize("case", ["train", "eval"])
def test_logits_and_block_nelbo(hub_model, io, case):
    """t per block and x_t are re-derived from the raw draws as the original does (interval, `<=`, ignore_bos)."""
    low, high = INTERVALS[case]
    strata = torch.arange(24).view(3, 8) / 24
    t_blocks = ((io[f"{case}_u_blocks"] / 24 + strata) % 1) * (high - low) + low
    t = t_blocks.repeat_interleave(4, dim=-1)
    move_chance, weight = hub_model.noise_schedule(t)
    noisy = torch.where(io[f"{case}_u_mask"] <= move_chance, MASK, io["x0"])
    noisy[:, 0] = io["x0"][:, 0]
    assert torch.equal(t_blocks, io[f"{case}_t_blocks"]) and torch.equal(noisy, io[f"{case}_xt"])
    labels = io["x0"].masked_fill(io[f"{case}_token_mask"] == 0, -100)  # eval: BOS not scored
    with torch.no_grad():
        output = hub_model(input_ids=noisy, clean_ids=io["x0"], timesteps=t, labels=labels)
    torch.testing.assert_close(output.logits, io[f"{case}_logits"], **LOGITS)
    torch.testing.assert_close(output.loss, io[f"{case}_loss"], **LOSS)
    terms = masked_diffusion_nelbo(output.logits, noisy, io["x0"], weight, MASK)
    torch.testing.assert_close(terms, io[f"{case}_loss_per_token"], **LOSS)
    torch.testing.assert_close(terms * io[f"{case}_token_mask"], io[f"{case}_nlls"], **LOSS)


def test_time_conditioning_and_block_size_8(fixture_dir, io):
    model = convert_diffusion(fixture_dir / "hf", mask_token_id=MASK)
    with torch.no_grad():
        model.config.block_size = 8
        torch.testing.assert_close(model(input_ids=io["train_xt"], clean_ids=io["x0"]).logits,
                                   io["logits_block_size8"], **LOGITS)
        model.config.block_size, model.config.time_conditioning = 4, True
        for conditioning in ({"sigma": io["timecond_sigma"]}, {"timesteps": io["train_t"]}):
            torch.testing.assert_close(model(input_ids=io["train_xt"], clean_ids=io["x0"], **conditioning).logits,
                                       io["logits_timecond"], **LOGITS)


def test_buffers_win_over_the_hub_config(hub_model, caplog, fixture_dir):
    """The fixture's config says (0.001, 0.999); its checkpoint's buffers say (0.3, 0.8): the buffers are taken,
    the config follows them, and the converter says so."""
    assert json.loads((fixture_dir / "hf" / "config.json").read_text())["sampling_eps_min"] == 0.001
    torch.testing.assert_close(torch.tensor(hub_model.sampling_interval), torch.tensor([0.3, 0.8]))
    assert (hub_model.config.sampling_eps_min, hub_model.config.sampling_eps_max) == hub_model.sampling_interval
    with caplog.at_level(logging.WARNING):
        convert_diffusion(fixture_dir / "hf", mask_token_id=MASK)
    assert "buffers (0.3, 0.8) differ from its config (0.001, 0.999)" in caplog.text


def test_buffers_win_over_the_lightning_config_and_the_converter_says_so(fixture_dir, caplog):
    """Issue 14.23: the training config asks for (1e-3, 1); the searched buffers (0.3, 0.8) are used, and a Lightning
    checkpoint announces it like a Hub folder."""
    with caplog.at_level(logging.WARNING):
        model = convert_diffusion(fixture_dir / "lightning" / "bd3lm_tiny_bs4.ckpt", mask_token_id=MASK)
    torch.testing.assert_close(torch.tensor(model.sampling_interval), torch.tensor([0.3, 0.8]))
    assert "buffers (0.3, 0.8) differ from its config (0.001, 1.0)" in caplog.text


def test_lightning_checkpoint_ema_and_live_weights(fixture_dir, hub_model, io):
    ema = convert_diffusion(fixture_dir / "lightning" / "bd3lm_tiny_bs4.ckpt", mask_token_id=MASK)
    for (name, ours), theirs in zip(ema.state_dict().items(), hub_model.state_dict().values()):
        assert torch.equal(ours, theirs), f"EMA weights differ from the Hub file at {name}"
    live = convert_diffusion(fixture_dir / "lightning" / "bd3lm_tiny_bs4.ckpt", mask_token_id=MASK, weights="live")
    with torch.no_grad():
        torch.testing.assert_close(live(input_ids=io["train_xt"], clean_ids=io["x0"]).logits,
                                   io["logits_live_weights"], **LOGITS)


def test_invalid_buffers_are_refused(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir / "hf", tmp_path / "hf")
    state = load_file(tmp_path / "hf" / "model.safetensors")
    state["sampling_eps_min"] = torch.tensor(0.9)
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match="0 < min < max <= 1"):
        convert_diffusion(tmp_path / "hf", mask_token_id=MASK)
    del state["sampling_eps_min"]
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match="lacks the sampling_eps_min/sampling_eps_max buffers"):
        convert_diffusion(tmp_path / "hf", mask_token_id=MASK)


def test_unknown_key_in_lightning_checkpoint_is_named(fixture_dir, tmp_path):
    checkpoint = torch.load(fixture_dir / "lightning" / "bd3lm_tiny_bs4.ckpt", weights_only=True)
    checkpoint["state_dict"]["backbone.label_embed.embedding_table.weight"] = torch.zeros(3, 2)
    torch.save(checkpoint, tmp_path / "extra.ckpt")
    with pytest.raises(ValueError, match=r"Unknown keys.*label_embed"):
        convert_diffusion(tmp_path / "extra.ckpt", mask_token_id=MASK, weights="live")


@pytest.mark.slow
def test_exported_buffers_survive_a_fresh_process(fixture_dir, tmp_path, io):
    """Convert -> export (verified) -> AutoModelForMaskedLM with trust_remote_code in a new interpreter: the trained
    interval comes back from the weights, and the logits match the fixture."""
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer(127, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")).save_pretrained(tokenizer_dir)
    assert hub_exports_cli(["convert", "bd3lm", str(fixture_dir / "hf"), str(tmp_path / "out"),
                            "--tokenizer", str(tokenizer_dir)]) == 0
    save_file({"xt": io["train_xt"], "x0": io["x0"]}, tmp_path / "inputs.safetensors")
    script = (
        "import sys, torch; from safetensors.torch import load_file, save_file; "
        "from transformers import AutoModelForMaskedLM; "
        "m = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True); i = load_file(sys.argv[2]); "
        "print(type(m).__module__, m.sampling_interval); "
        "save_file({'logits': m(input_ids=i['xt'], clean_ids=i['x0']).logits.detach()}, sys.argv[3])"
    )
    arguments = [str(tmp_path / name) for name in ("out", "inputs.safetensors", "logits.safetensors")]
    done = subprocess.run([sys.executable, "-I", "-c", script, *arguments], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    module, interval = done.stdout.strip().split(" ", 1)
    assert module.startswith("transformers_modules")
    assert interval == "(0.30000001192092896, 0.800000011920929)"
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], io["train_logits"], **LOGITS)
