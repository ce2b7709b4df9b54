"""The modded-GPT pretraining script end to end on CPU: a short run with checkpoints (each exported and verified),
the final export, its report and samples; and every modded_gpt config parsing."""

import json
import math
from pathlib import Path

import pytest

from hub_exports import load_checkpoint, verify
from trainers import run_modded_gpt

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "trainers" / "configs").glob("modded_gpt_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path, tmp_path):
    model_args, data_args, training_args = run_modded_gpt.parse(
        [str(path), "--output_dir", str(tmp_path), "--use_cpu", "true", "--tf32", "false", "--bf16", "false"])
    assert data_args.max_seq_length > 0 and {"hidden_size", "head_dim"} <= set(model_args.config_overrides)


def test_tiny_run_trains_checkpoints_exports_and_generates(tmp_path, capsys):
    args = run_modded_gpt.parse(["--output_dir", str(tmp_path), "--max_steps", "60", "--save_strategy", "steps",
                                 "--save_steps", "30", "--embedded_sentences", "3000", "--logging_steps", "10"])
    run_modded_gpt.main(*args)
    out = capsys.readouterr().out
    assert "Held-out perplexity" in out and "Exported and verified" in out
    for checkpoint in ("checkpoint-30", "checkpoint-60"):
        assert any(check.name == "fresh-process load" for check in verify(tmp_path / checkpoint / "export"))
    results = json.loads((tmp_path / "results.json").read_text())
    model = load_checkpoint(tmp_path / "export")
    uniform = math.log(model.config.tokenizer_vocab_size)
    assert results["train_steps"] == 60 and results["eval_loss"] < 0.6 * uniform, "60 steps must learn something"
    assert len(results["samples"]) == 3 and all(results["samples"])
    losses = [e["loss"] for e in json.loads((tmp_path / "checkpoint-60" / "trainer_state.json").read_text())
              ["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
