"""The LTG-BERT training script end to end on CPU (a few steps), and every shipped YAML config parses."""

import json
from pathlib import Path

import pytest
from transformers import TrainingArguments

from hub_exports.exporting import load_checkpoint
from trainers import run_ltg_bert
from trainers.arguments import DataArguments, ModelArguments, parse_args

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "trainers" / "configs").glob("*.yaml"))
ARGUMENTS = (ModelArguments, DataArguments, TrainingArguments)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path, tmp_path):
    model_args, data_args, training_args = parse_args(ARGUMENTS, [str(path), "--output_dir", str(tmp_path)])
    assert training_args.output_dir == str(tmp_path)
    assert data_args.max_seq_length > 0 and isinstance(model_args.config_overrides, dict)


def test_config_file_rejects_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("hidden_sise: 12\noutput_dir: x\n")
    with pytest.raises(ValueError, match="hidden_sise"):
        parse_args(ARGUMENTS, [str(path)])


def test_tiny_run_trains_exports_and_verifies(tmp_path, capsys):
    args = parse_args(ARGUMENTS, [str(CONFIGS[0]), "--output_dir", str(tmp_path), "--max_steps", "3",
                                  "--embedded_sentences", "600", "--logging_steps", "1"])
    run_ltg_bert.main(*args)
    out = capsys.readouterr().out
    assert f"Exported and verified: {tmp_path / 'export'}" in out
    model = load_checkpoint(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    tokenizer = json.loads((tmp_path / "export" / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) == model.config.vocab_size
    assert config["pad_token_id"] == tokenizer["model"]["vocab"]["[PAD]"]
    assert "masked-token accuracy" in (tmp_path / "export" / "README.md").read_text()
