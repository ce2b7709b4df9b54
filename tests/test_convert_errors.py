"""`python -m hub_exports convert` on broken originals (issue 14.17, 14.18, 14.21): each converter ends with one
message naming the file and the key or field, exit status 1 and no traceback; never a raw `load_state_dict`
RuntimeError, an unnamed corrupt file, or torch's advice to turn `weights_only` off. Each case copies a real fixture
into tmp_path and breaks one thing."""

import json
import shutil
from dataclasses import dataclass

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from hub_exports.__main__ import main as hub_exports_cli
from tests.modeling_common import tiny_tokenizer
from tests.models.ltg_bert.test_convert_ltg_bert import BABYLM_SPECIALS

DIFFUSION_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


@dataclass(frozen=True)
class Original:
    fixture: str  # folder under ../shared/fixtures
    weights: str
    drop: tuple  # (original key, the model tensor it leaves missing)
    extra: tuple  # (an original key the rules map, to a block the config does not have; its model key)
    reshape: tuple  # (original key, its model key)
    tokenizer: tuple  # tiny_tokenizer arguments
    flags: tuple = ()


ORIGINALS = {
    "ltg_bert": Original(
        "ltgbert", "pytorch_model.bin",
        ("transformer.layers.1.mlp.mlp.4.weight", "ltg_bert.layers.1.mlp.down_proj.weight"),
        ("transformer.layers.9.attention.in_proj_v.weight", "ltg_bert.layers.9.attention.v_proj.weight"),
        ("transformer.layers.0.attention.out_proj.weight", "ltg_bert.layers.0.attention.out_proj.weight"),
        (512, BABYLM_SPECIALS), ("--position-qk-split", "chunk_first")),
    "mdlm": Original("mdlm/hf", "model.safetensors",
                     ("backbone.blocks.1.mlp.2.bias", "mdlm.layers.1.mlp.2.bias"),
                     ("backbone.blocks.5.norm1.weight", "mdlm.layers.5.attn_norm.weight"),
                     ("backbone.blocks.0.attn_out.weight", "mdlm.layers.0.out_proj.weight"), (127, DIFFUSION_SPECIALS)),
    "bd3lm": Original("bd3lm/hf", "model.safetensors",
                      ("backbone.blocks.1.mlp.2.bias", "bd3lm.layers.1.mlp.2.bias"),
                      ("backbone.blocks.5.norm1.weight", "bd3lm.layers.5.attn_norm.weight"),
                      ("backbone.blocks.0.attn_out.weight", "bd3lm.layers.0.out_proj.weight"),
                      (127, DIFFUSION_SPECIALS)),
    "backpack": Original("backpack_gpt2", "pytorch_model.bin",
                         ("backpack.sense_weight_net.c_attn.bias", "backpack.sense_weights.bias"),
                         ("backpack.gpt2_model.h.7.ln_1.weight", "backpack.layers.7.attn_norm.weight"),
                         ("backpack.gpt2_model.h.0.mlp.c_fc.bias", "backpack.layers.0.mlp.up_proj.bias"),
                         (257, DIFFUSION_SPECIALS + ("[MASK]", "[BOS]"))),
}


@pytest.fixture
def tokenizers(tmp_path):
    folders = {}
    for name, original in ORIGINALS.items():
        folders[name] = tmp_path / f"tokenizer_{name}"
        tiny_tokenizer(*original.tokenizer).save_pretrained(folders[name])
    return folders


def copy_original(shared_dir, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(shared_dir / "fixtures" / ORIGINALS[name].fixture, folder,
                    ignore=lambda _, files: [f for f in files if f not in ("config.json", ORIGINALS[name].weights)])
    return folder


def read_weights(path):
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def write_weights(path, state):
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state, path)


def refused(capsys, code, *named):
    """Exit status 1, one message, no traceback, naming everything in `named`; returns the message."""
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.count("Not converted:") == 1, err
    for text in named:
        assert str(text) in err, f"{text!r} not named in: {err}"
    return err


def convert(name, source, out, tokenizer, *flags):
    return hub_exports_cli(["convert", name, str(source), str(out), "--tokenizer", str(tokenizer),
                            *ORIGINALS[name].flags, *flags])


def break_state(state: dict, original: Original, case: str) -> str:
    """Drop, add or mis-shape one tensor of `state`; returns the model key the message must name."""
    if case == "missing key":
        del state[original.drop[0]]
        return original.drop[1]
    if case == "extra key":
        state[original.extra[0]] = state[original.reshape[0]].clone()
        return original.extra[1]
    state[original.reshape[0]] = state[original.reshape[0]][:-1].clone()
    return original.reshape[1]


@pytest.mark.parametrize("case", ["missing key", "extra key", "mis-shaped key"])
@pytest.mark.parametrize("name", ORIGINALS)
def test_a_broken_key_is_named_with_its_file(shared_dir, tmp_path, tokenizers, capsys, name, case):
    folder = copy_original(shared_dir, tmp_path, name)
    weights = folder / ORIGINALS[name].weights
    state = read_weights(weights)
    key = break_state(state, ORIGINALS[name], case)
    write_weights(weights, state)
    refused(capsys, convert(name, folder, tmp_path / "out", tokenizers[name]), weights, key)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ORIGINALS)
def test_a_damaged_file_is_named(shared_dir, tmp_path, tokenizers, capsys, name):
    folder = copy_original(shared_dir, tmp_path, name)
    weights = folder / ORIGINALS[name].weights
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    refused(capsys, convert(name, folder, tmp_path / "out", tokenizers[name]), weights, "cannot be read")
    weights.write_bytes(data)
    (folder / "config.json").write_text('{"vocab_size": 128,')
    refused(capsys, convert(name, folder, tmp_path / "out", tokenizers[name]), folder / "config.json",
            "not valid JSON")
    (folder / "config.json").unlink()
    refused(capsys, convert(name, folder, tmp_path / "out", tokenizers[name]), folder / "config.json",
            "does not exist")


@pytest.mark.parametrize("name", ORIGINALS)
def test_a_missing_source_or_a_file_for_a_folder_is_named(shared_dir, tmp_path, tokenizers, capsys, name):
    refused(capsys, convert(name, tmp_path / "nowhere", tmp_path / "out", tokenizers[name]), tmp_path / "nowhere")
    folder = copy_original(shared_dir, tmp_path, name)
    weights = folder / ORIGINALS[name].weights
    refused(capsys, convert(name, weights, tmp_path / "out", tokenizers[name]), weights)


@pytest.mark.parametrize("name", ["ltg_bert", "mdlm", "backpack", "modded_gpt"])
def test_an_unsafe_pickle_is_refused_for_safety(shared_dir, tmp_path, tokenizers, capsys, name):
    """Never torch's advice (re-run with weights_only=False): the file is refused and says why."""
    payload = {"embedding.word_embedding.weight": torch.zeros(1), "payload": shutil.rmtree}
    if name == "modded_gpt":
        source = tmp_path / "state_step001770.pt"
        torch.save(payload, source)
        fixture_tokenizer = tmp_path / "gpt2"
        shutil.copytree(shared_dir / "data" / "tokenizers" / "gpt2", fixture_tokenizer)
        code = hub_exports_cli(["convert", name, str(source), str(tmp_path / "out"), "--tokenizer",
                                str(fixture_tokenizer)])
    else:
        source = copy_original(shared_dir, tmp_path, name)
        (source / ORIGINALS[name].weights).unlink()
        torch.save(payload, source / "pytorch_model.bin")
        code = convert(name, source, tmp_path / "out", tokenizers[name])
    err = refused(capsys, code, "refused for safety", "shutil.rmtree", "hubzoo never unpickles code")
    assert "weights_only" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing key", "extra key", "mis-shaped key"])
def test_lightning_ema_checkpoint_names_the_broken_key(shared_dir, tmp_path, tokenizers, capsys, case):
    """Issue 14.18: with the default --weights ema, a key missing from, added to or mis-shaped in the state dict
    is named, instead of "30 EMA shadow parameters for 29 backbone parameters" or "not in parameter order"."""
    source = tmp_path / "mdlm_tiny.ckpt"
    checkpoint = torch.load(shared_dir / "fixtures" / "mdlm" / "lightning" / source.name, weights_only=True)
    key = break_state(checkpoint["state_dict"], ORIGINALS["mdlm"], case)
    torch.save(checkpoint, source)
    err = refused(capsys, convert("mdlm", source, tmp_path / "out", tokenizers["mdlm"]), source, key)
    assert "EMA shadow" not in err and "parameter order" not in err


@pytest.mark.parametrize("name", ["ltg_bert", "mdlm"])
def test_a_source_without_a_tokenizer_says_to_pass_one(shared_dir, tmp_path, capsys, name):
    """Issue 14.21: the originals ship no tokenizer; the conversion stops before any work and says how to give one."""
    source = copy_original(shared_dir, tmp_path, name)
    if name == "mdlm":  # the Lightning .ckpt: a file, which can hold no tokenizer
        source = shared_dir / "fixtures" / "mdlm" / "lightning" / "mdlm_tiny.ckpt"
    args = ["convert", name, str(source), str(tmp_path / "out"), *ORIGINALS[name].flags]
    refused(capsys, hub_exports_cli(args), source, "ships no tokenizer", "pass --tokenizer")
    refused(capsys, hub_exports_cli(args + ["--tokenizer", str(tmp_path)]), f"--tokenizer {tmp_path}",
            "is not a tokenizer folder", "pass --tokenizer")


@pytest.mark.parametrize("name", ["modded_gpt", "backpack"])
def test_the_default_gpt2_tokenizer_offline_says_to_pass_one(shared_dir, tmp_path, capsys, monkeypatch, name):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    source = shared_dir / "fixtures" / ("modded_gpt/ckpt_small.pt" if name == "modded_gpt" else "backpack_gpt2")
    refused(capsys, hub_exports_cli(["convert", name, str(source), str(tmp_path / "out")]), "'gpt2'",
            "cannot be loaded", "pass --tokenizer", "vocab.json and merges.txt")


def test_a_bad_config_value_is_named(shared_dir, tmp_path, tokenizers, capsys):
    folder = copy_original(shared_dir, tmp_path, "ltg_bert")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = ["not", "a", "mapping"]
    (folder / "config.json").write_text(json.dumps(config))
    refused(capsys, convert("ltg_bert", folder, tmp_path / "out", tokenizers["ltg_bert"]), "config.json")
