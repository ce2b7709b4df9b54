"""The modded-nanogpt converter: format detection, `_orig_mod.`, padded vocabulary, padded `scalars`, strictness
(unknown, missing, mis-shaped tensors; foreign pickles), the tokenizer checks, and the CLI export with the fixtures
and with GPT-2's real tokenizer (`../shared/data/tokenizers/gpt2`)."""

import logging
import pickle
from typing import Optional

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hub_exports.__main__ import main as hub_exports_cli
from hub_exports.convert_modded_gpt import (
    convert_modded_gpt,
    read_checkpoint,
    recorded_window_blocks,
)
from hub_exports.strict_mapping import ConversionError
from hub_exports.tokenizer_files import load_tokenizer

from tests.models.modded_gpt.test_modded_gpt_parity import FIXTURE


@pytest.fixture(scope="module")
def input_ids(fixture_dir):
    return load_file(fixture_dir / "inputs.safetensors")["input_ids"].long()[None]


def raw_checkpoint(fixture_dir, checkpoint_format):
    return torch.load(fixture_dir / f"ckpt_{checkpoint_format}.pt", map_location="cpu", weights_only=True)


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


def save(tmp_path, checkpoint, name="ckpt.pt"):
    torch.save(checkpoint, tmp_path / name)
    return tmp_path / name


def fixture_tokenizer():
    """321 ids like the fixture's vocabulary, the last one GPT-2's EOT."""
    vocab = {f"w{i}": i for i in range(320)} | {"<|endoftext|>": 320}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="w0")


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_prefix_is_optional_and_extra_entries_ignored(fixture_dir, input_ids, tmp_path, checkpoint_format):
    checkpoint = raw_checkpoint(fixture_dir, checkpoint_format)
    assert set(checkpoint) == {"step", "code", "model", "optimizers"}
    assert all(key.startswith("_orig_mod.") for key in checkpoint["model"])
    reference = logits(convert_modded_gpt(fixture_dir / f"ckpt_{checkpoint_format}.pt", **FIXTURE)[0], input_ids)
    bare = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    model, detected = convert_modded_gpt(save(tmp_path, bare), **FIXTURE)
    assert detected == checkpoint_format
    assert torch.equal(logits(model, input_ids), reference)


def test_scalars_padding_is_tolerated(fixture_dir, input_ids, tmp_path):
    """The small format pads `scalars` to the world size (64 = 60 + 4 on 8 GPUs); a 1-GPU run has none."""
    state = read_checkpoint(fixture_dir / "ckpt_small.pt")
    reference = logits(convert_modded_gpt(state, **FIXTURE)[0], input_ids)
    for length in (60, 62, 72):
        scalars = torch.cat([state["scalars"][:60], torch.ones(max(0, length - 60))])
        model, _ = convert_modded_gpt({**state, "scalars": scalars}, **FIXTURE)
        assert model.config.num_scalars == length
        assert torch.equal(logits(model, input_ids), reference)
    with pytest.raises(ValueError, match=r"scalars has shape \(59,\).*at least 60"):
        convert_modded_gpt({**state, "scalars": state["scalars"][:59]}, **FIXTURE)


def test_padded_vocabulary(fixture_dir, input_ids):
    """Small: embeddings and head padded to 384 rows; medium: only the head. Ids of padding rows are refused, and
    `generate` never emits them even when their logits are the largest."""
    small, _ = convert_modded_gpt(fixture_dir / "ckpt_small.pt", **FIXTURE)
    medium, _ = convert_modded_gpt(fixture_dir / "ckpt_medium.pt", **FIXTURE)
    for model in (small, medium):
        assert (model.config.vocab_size, model.config.tokenizer_vocab_size) == (384, 321)
        with pytest.raises(ValueError, match="vocab"):
            model(torch.tensor([[5, 321]]))
    assert torch.equal(medium.model.embed_tokens.weight[321:], torch.zeros(63, 64))
    with torch.no_grad():
        small.lm_head.weight[321:] = 50 * small.lm_head.weight[:321].abs().max()
    prompt = input_ids[:, :20]
    assert logits(small, prompt)[0, -1].argmax() >= 321
    generated = small.generate(prompt, max_new_tokens=8, do_sample=False)
    sampled = small.generate(prompt, max_new_tokens=8, do_sample=True, temperature=5.0)
    assert generated.max() < 321 and sampled.max() < 321


def test_unknown_missing_and_misshapen_tensors(fixture_dir):
    state = read_checkpoint(fixture_dir / "ckpt_small.pt")
    with pytest.raises(ValueError, match=r"unknown keys.*blocks\.0\.attn\.rotary\.inv_freq"):
        convert_modded_gpt({**state, "blocks.0.attn.rotary.inv_freq": torch.zeros(8)}, **FIXTURE)
    without = {key: value for key, value in state.items() if key != "blocks.3.mlp.c_fc.weight"}
    with pytest.raises(ValueError, match=r"lacks tensors for \['model\.layers\.3\.mlp\.up_proj\.weight'\]"):
        convert_modded_gpt(without, **FIXTURE)
    with pytest.raises(ValueError, match=r"wrong shape.*model\.layers\.2\.attn\.o_proj\.weight: checkpoint \(64, 32\)"):
        convert_modded_gpt({**state, "blocks.2.attn.c_proj.weight": torch.zeros(64, 32)}, **FIXTURE)
    with pytest.raises(ValueError, match="not a modded-nanogpt small"):
        convert_modded_gpt({"embed.weight": torch.zeros(4, 4)}, **FIXTURE)
    legacy = {**state, "skip_weights": torch.ones(6)}
    del legacy["scalars"]
    with pytest.raises(ValueError):
        convert_modded_gpt(legacy, **FIXTURE)


def test_file_level_errors(fixture_dir, tmp_path):
    checkpoint = raw_checkpoint(fixture_dir, "small")
    with pytest.raises(ValueError, match=r"unknown top-level entries \['scheduler'\]"):
        convert_modded_gpt(save(tmp_path, {**checkpoint, "scheduler": {}}), **FIXTURE)
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps(torch.nn.Linear(2, 2)))
    with pytest.raises(ConversionError, match="pickled.pt was refused for safety") as refused:
        convert_modded_gpt(tmp_path / "pickled.pt", **FIXTURE)
    assert "weights_only" not in str(refused.value)  # torch's advice is to turn the safety off


def test_vocabulary_and_eot_must_agree(fixture_dir, shared_dir):
    gpt2 = load_tokenizer(shared_dir / "data" / "tokenizers" / "gpt2")
    with pytest.raises(ValueError, match="50257 token ids do not fit the checkpoint's 384 head rows"):
        convert_modded_gpt(fixture_dir / "ckpt_small.pt", gpt2, head_dim=32)
    with pytest.raises(ValueError, match="vocabulary sizes disagree"):
        convert_modded_gpt(fixture_dir / "ckpt_medium.pt", **{**FIXTURE, "tokenizer_vocab_size": 300})
    with pytest.raises(ValueError, match="does not store the real vocabulary"):
        convert_modded_gpt(fixture_dir / "ckpt_small.pt", eot_token_id=320, head_dim=32)
    with pytest.raises(ValueError, match="EOT"):
        convert_modded_gpt(fixture_dir / "ckpt_small.pt", tokenizer_vocab_size=321, head_dim=32)
    with pytest.raises(ValueError, match="eot_token_id=5 contradicts"):
        convert_modded_gpt(fixture_dir / "ckpt_small.pt", fixture_tokenizer(), eot_token_id=5, head_dim=32)
    with pytest.raises(ValueError, match="not a multiple of head_dim=48"):
        convert_modded_gpt(fixture_dir / "ckpt_small.pt", **{**FIXTURE, "head_dim": 48})


def training_script(checkpoint_format: str, window_tokens: int, num_iterations: Optional[int] = None) -> str:
    """The lines of the speedrun's scripts that set the sliding window (small: linear, medium: cubic growth), amid
    other code, as the checkpoints' `code` holds them."""
    num_iterations = num_iterations or {"small": 1770, "medium": 5960}[checkpoint_format]
    growth = "x" if checkpoint_format == "small" else "factor"
    cubic = "    factor = 4 * x ** 3 - 6 * x ** 2 + 3 * x\n" if checkpoint_format == "medium" else ""
    return (f"@dataclass\nclass Hyperparameters:\n    num_iterations = {num_iterations} # number of iterations to run\n"
            "    cooldown_frac = 0.4\nargs = Hyperparameters()\n\n"
            "def get_window_size_blocks(step: int):\n    x = step / args.num_iterations # progress in training\n"
            f"    assert 0 <= x <= 1\n{cubic}    window_size = next_multiple_of_n({window_tokens} * {growth}, n=128)\n"
            "    return get_window_size_blocks_helper(window_size)\n")


@pytest.mark.parametrize(("checkpoint_format", "tokens", "step", "blocks"), [
    ("small", 1728, 1770, 14), ("small", 1728, 885, 7), ("small", 1728, 0, 1),
    ("medium", 3456, 5960, 27), ("medium", 3456, 2980, 14)])  # cubic: factor(1/2) = 1/2
def test_the_window_is_read_from_the_recorded_script(checkpoint_format, tokens, step, blocks):
    checkpoint = {"step": step, "code": training_script(checkpoint_format, tokens)}
    assert recorded_window_blocks(checkpoint) == blocks


def test_an_unreadable_window_schedule_is_not_guessed():
    script = training_script("small", 1728)
    for checkpoint in ({"step": 1770, "code": "<fixture placeholder>"},  # the fixtures' code
                       {"step": 1770, "code": script + script.replace("1728", "3456")},  # two schedules
                       {"step": 1770, "code": script.replace("1728 * x", "1728 * x ** 2")},  # another schedule
                       {"step": 3000, "code": script},  # past num_iterations
                       {"code": script}):  # no step
        assert recorded_window_blocks(checkpoint) is None


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_the_recorded_window_gives_the_trained_model(fixture_dir, input_ids, tmp_path, caplog, checkpoint_format):
    """Issue 14.22: the fixtures were run with a 2-block window; a checkpoint whose script records that window
    converts, without the window stated, into the model that matches the original's logits."""
    checkpoint = raw_checkpoint(fixture_dir, checkpoint_format)
    checkpoint["code"] = training_script(checkpoint_format, 256)
    stated = {key: value for key, value in FIXTURE.items() if key != "sliding_window_num_blocks"}
    with caplog.at_level(logging.INFO, logger="hub_exports"):
        model, _ = convert_modded_gpt(save(tmp_path, checkpoint), **stated)
    assert model.config.sliding_window_num_blocks == 2
    assert "sliding window: 2 blocks, from the training script recorded in the checkpoint" in caplog.text
    reference = load_file(fixture_dir / f"outputs_{checkpoint_format}.safetensors")["logits_capped"]
    assert (logits(model, input_ids)[0] - reference).abs().max() <= 5e-4


def test_cli_requires_the_window_when_the_checkpoint_records_none(fixture_dir, tmp_path, capsys):
    """The fixtures' `code` is a placeholder: the era's final window (14 blocks) would load, verify and differ from
    the original by 12.5 in the logits, so the flag is required."""
    fixture_tokenizer().save_pretrained(tmp_path / "tokenizer")
    code = hub_exports_cli(["convert", "modded_gpt", str(fixture_dir / "ckpt_small.pt"), str(tmp_path / "out"),
                            "--tokenizer", str(tmp_path / "tokenizer"), "--head-dim", "32", "--max-length", "384"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "ckpt_small.pt: the checkpoint does not record its sliding window" in err and "--window-blocks" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("checkpoint_format", ["small", "medium"])
def test_cli_exports_and_verifies(fixture_dir, input_ids, tmp_path, capsys, checkpoint_format):
    fixture_tokenizer().save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "export"
    code = hub_exports_cli(["convert", "modded_gpt", str(fixture_dir / f"ckpt_{checkpoint_format}.pt"), str(out),
                            "--tokenizer", str(tmp_path / "tokenizer"), "--head-dim", "32", "--window-blocks", "2",
                            "--max-length", "384"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"Detected the {checkpoint_format} format: {12 if checkpoint_format == 'small' else 16} layers" in printed
    assert "vocab 321 (padded 384), EOT 320" in printed and "Exported and verified" in printed
    reference = load_file(fixture_dir / f"outputs_{checkpoint_format}.safetensors")["logits_capped"]
    exported = AutoModelForCausalLM.from_pretrained(out).eval()  # the registered local class (same file)
    assert (logits(exported, input_ids)[0] - reference).abs().max() <= 5e-4


def test_cli_refuses_a_mismatched_tokenizer(fixture_dir, shared_dir, tmp_path, capsys):
    code = hub_exports_cli(["convert", "modded_gpt", str(fixture_dir / "ckpt_small.pt"), str(tmp_path / "out"),
                            "--tokenizer", str(shared_dir / "data" / "tokenizers" / "gpt2"), "--head-dim", "32"])
    assert code == 1
    assert "do not fit the checkpoint's 384 head rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_with_gpt2_tokenizer_at_full_vocabulary(fixture_dir, shared_dir, tmp_path, capsys):
    """A small-format checkpoint at GPT-2's real vocabulary (50257 ids in 50304 rows; the fixture's rows repeated)
    converts with GPT-2's BPE files into an export that verifies in a fresh process and generates real ids."""
    checkpoint = raw_checkpoint(fixture_dir, "small")
    for key, tensor in checkpoint["model"].items():
        if tensor.shape[0] == 384 and tensor.dim() == 2:
            checkpoint["model"][key] = tensor.repeat(132, 1)[:50304]
    checkpoint["code"] = training_script("small", 1728)  # the record's schedule: 14 blocks at its last step
    source = save(tmp_path, checkpoint)
    out = tmp_path / "export"
    code = hub_exports_cli(["convert", "modded_gpt", str(source), str(out), "--tokenizer",
                            str(shared_dir / "data" / "tokenizers" / "gpt2"), "--head-dim", "32"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vocab 50257 (padded 50304), EOT 50256" in printed and "windows long/short 14/7 blocks" in printed
    tokenizer = load_tokenizer(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = tokenizer("<|endoftext|>The speedrun", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, prompt.input_ids.shape[1] + 5) and generated.max() < 50257
