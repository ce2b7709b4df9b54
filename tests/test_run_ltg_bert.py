"""The LTG-BERT training script end to end on CPU (a few steps), and every shipped YAML config parses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hub_exports import load_checkpoint, verify
from trainers import run_ltg_bert
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.mlm_config import MaskedLMTrainingArguments

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "trainers" / "configs").glob("ltg_bert_*.yaml"))
TINY = REPO_ROOT / "trainers" / "configs" / "ltg_bert_tiny.yaml"
ARGUMENTS = (ModelArguments, DataArguments, MaskedLMTrainingArguments)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path, tmp_path):
    # GPU configs (bf16, tf32) parse on this CPU machine only when told to run on CPU.
    model_args, data_args, training_args = parse_args(
        ARGUMENTS, [str(path), "--output_dir", str(tmp_path), "--use_cpu", "true", "--tf32", "false"])
    assert training_args.output_dir == str(tmp_path)
    assert data_args.max_seq_length > 0 and isinstance(model_args.config_overrides, dict)


def test_config_file_rejects_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hidden_sise: 12\noutput_dir: x\n")
    with pytest.raises(ValueError, match="hidden_sise"):
        parse_args(ARGUMENTS, [str(path)])


def test_dict_flags_take_json_objects(tmp_path, capsys):
    model_args, _, _ = parse_args(ARGUMENTS, [str(TINY), "--output_dir", str(tmp_path),
                                              "--config_overrides", '{"hidden_size": 48, "num_hidden_layers": 1}'])
    assert model_args.config_overrides == {"hidden_size": 48, "num_hidden_layers": 1}
    for bad in ('[48]', "hidden_size=48"):
        with pytest.raises(SystemExit):
            parse_args(ARGUMENTS, [str(TINY), "--output_dir", str(tmp_path), "--config_overrides", bad])
        assert "expected a JSON object" in capsys.readouterr().err


def test_tiny_run_trains_exports_verifies_and_scores(tmp_path, capsys):
    args = parse_args(ARGUMENTS, [str(TINY), "--output_dir", str(tmp_path), "--max_steps", "4",
                                  "--save_strategy", "steps", "--save_steps", "2", "--embedded_sentences", "600",
                                  "--logging_steps", "1"])
    run_ltg_bert.main(*args)
    out = capsys.readouterr().out
    assert f"Exported and verified: {tmp_path / 'export'}" in out
    model = load_checkpoint(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    tokenizer = json.loads((tmp_path / "export" / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) == model.config.vocab_size
    assert config["pad_token_id"] == tokenizer["model"]["vocab"]["[PAD]"]
    # Every checkpoint carries an export that passes verify on its own.
    for step in (2, 4):
        checkpoint = tmp_path / f"checkpoint-{step}"
        assert (checkpoint / "optimizer.pt").is_file()  # still a resumable Trainer checkpoint
        assert all(check.ok for check in verify(checkpoint / "export"))
    # BLiMP on the embedded pairs: JSON + markdown, in the card too; a loss curve.
    result = json.loads((tmp_path / "blimp.json").read_text())
    assert result["num_pairs"] == 800 and result["num_paradigms"] == 4
    assert f"BLiMP accuracy {result['accuracy']:.4f}" in out
    card = (tmp_path / "export" / "README.md").read_text()
    assert "BLiMP (pll)" in card and (tmp_path / "blimp.md").read_text().strip() in card
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_embedded_default_learns_agreement(tmp_path):
    """The main job's own configuration, unchanged: a few CPU minutes must beat chance on its minimal pairs by a
    clear margin, in every paradigm family."""
    run_ltg_bert.main(*parse_args(ARGUMENTS, [str(TINY), "--output_dir", str(tmp_path), "--disable_tqdm", "true"]))
    result = json.loads((tmp_path / "blimp.json").read_text())
    print(f"embedded BLiMP {result['accuracy']:.3f}: {result['per_paradigm']}")
    assert result["accuracy"] > 0.7
    assert result["per_paradigm"]["subject_verb_agreement"] > 0.8
    assert result["per_paradigm"]["distractor_agreement_prepositional_phrase"] > 0.6


@pytest.mark.slow
def test_two_process_run(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: two gloo ranks share one tokenizer, train together
    and the main process exports, verifies and scores."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(REPO_ROOT / "trainers" / "run_ltg_bert.py"), str(TINY),
               "--output_dir", str(tmp_path), "--max_steps", "4", "--embedded_sentences", "600",
               "--save_strategy", "steps", "--save_steps", "4", "--disable_tqdm", "true"]
    out = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert "2 process(es), 64 examples per optimizer step" in out.stderr  # 2 ranks x 32
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert out.stdout.count("Exported and verified") == 1 and out.stdout.count("BLiMP accuracy") == 1
    assert all(check.ok for check in verify(tmp_path / "export"))
    assert all(check.ok for check in verify(tmp_path / "checkpoint-4" / "export"))
