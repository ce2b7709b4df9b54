"""Sequence-classification fine-tuning from an exported causal LM: the trunk is taken over strictly, the head is
new, a learnable task is learned, and the reports and the export come out; XNLI-style headerless pairs load."""

import json
import random
from pathlib import Path

import pytest
import torch

from hub_exports import export
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from tests.modeling_common import tiny_tokenizer
from trainers import classification_config, run_classification
from trainers.tokenization import document_separator


@pytest.fixture
def causal_lm_export(tmp_path):
    tokenizer = tiny_tokenizer(60)
    eot = document_separator(tokenizer)
    torch.manual_seed(0)
    model = ModdedGptForCausalLM(ModdedGptConfig(
        vocab_size=128, tokenizer_vocab_size=60, eot_token_id=eot, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16, intermediate_size=64,
        max_position_embeddings=32, zero_init_projections=False))
    return export(model, tokenizer, tmp_path / "clm"), model


def write_task(path, rows=320, seed=0):
    """Label 1 when the last word is one of w7..w20: visible to the last real token, where the class is read."""
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        words = [f"w{rng.randrange(5, 60)}" for _ in range(rng.randrange(3, 9))]
        lines.append(f"{' '.join(words)}\t{int(7 <= int(words[-1][1:]) <= 20)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("path", sorted(Path(run_classification.__file__).with_name("configs").glob("classify_*.yaml")),
                         ids=lambda p: p.name)
def test_every_config_parses(path, tmp_path):
    args, training_args = run_classification.parse([str(path), "--output_dir", str(tmp_path), "--use_cpu", "true",
                                                    "--bf16", "false", "--tf32", "false"])
    assert run_classification.parse_label_spec(args.labels) and args.max_seq_length > 0


def test_trunk_is_taken_over_strictly_and_the_head_is_new(causal_lm_export):
    folder, causal_lm = causal_lm_export
    classifier = classification_config.classifier_from_causal_lm(folder, ["no", "yes"])
    assert type(classifier).__name__ == "ModdedGptForSequenceClassification"
    trunk = causal_lm.model.state_dict()
    assert all(torch.equal(tensor, trunk[key]) for key, tensor in classifier.model.state_dict().items())
    assert classifier.config.id2label == {0: "no", 1: "yes"} and classifier.score.weight.shape == (2, 32)


def test_fine_tuning_learns_a_learnable_task(causal_lm_export, tmp_path, capsys):
    folder, _ = causal_lm_export
    args = run_classification.parse([
        "--model_name_or_path", str(folder), "--train_file", str(write_task(tmp_path / "train.tsv")),
        "--eval_file", str(write_task(tmp_path / "test.tsv", rows=200, seed=1)), "--labels", "0=no,1=yes",
        "--max_seq_length", "16", "--output_dir", str(tmp_path / "out"), "--max_steps", "120",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--seed", "0", "--task_name", "last-word"])
    assert run_classification.main(*args) == 0
    result = json.loads((tmp_path / "out" / "classification.json").read_text())
    assert result["accuracy"] > 0.9 and result["accuracy"] > result["majority_baseline_accuracy"] + 0.1
    assert not result["collapsed"] and result["num_items"] == 200
    assert sum(sum(row) for row in result["confusion_matrix"]["matrix"]) == 200
    assert "last-word: accuracy" in capsys.readouterr().out
    assert "Confusion matrix" in (tmp_path / "out" / "classification.md").read_text()
    assert (tmp_path / "out" / "export" / "model.safetensors").is_file()


def test_headerless_pairs_are_encoded_with_the_pair_last(shared_dir):
    args = classification_config.ClassificationArguments(
        model_name_or_path="unused", train_file="unused", eval_file="unused",
        labels="entailment=entailment,neutral=neutral,contradiction=contradiction", text_column="premise",
        text_pair_column="hypothesis", column_names="premise,hypothesis,label", max_seq_length=12)
    texts, labels = classification_config.load_split(shared_dir / "data" / "xnli" / "dev-en.tsv", args,
                                                     ["entailment", "neutral", "contradiction"], 30)
    assert len(texts) == 30 and all(isinstance(t, tuple) for t in texts) and set(labels) == {0, 1, 2}
    tokenizer = tiny_tokenizer(60)
    rows = classification_config.encode([("w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20", "w30 w31 w32")], [0],
                                        tokenizer, args, eot=3)
    ids = rows["input_ids"][0]
    assert len(ids) == 12 and ids[0] == 3 and ids[-3:] == [30, 31, 32], "the first text is cut, the pair kept"
