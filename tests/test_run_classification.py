"""Sequence-classification fine-tuning from an exported causal LM (modded GPT) and from an exported masked LM
(LTG-BERT): the trunk is taken over strictly, the head is new, each architecture's examples are encoded its own way
(`[EOT] text` for the causal LM; the tokenizer's `[CLS] a [SEP] b [SEP]` template, truncated with the special tokens
kept, for the encoder), a learnable task is learned, and the reports and the export come out; XNLI-style headerless
pairs load; an export whose architecture has no sequence classifier (MDLM) is refused before any training."""

import json
import logging
import random
from pathlib import Path

import pytest
import torch
from tokenizers import processors

from hub_exports import export
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
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
    classifier = classification_config.classifier_from_export(folder, ["no", "yes"])
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
    ids = classification_config.encode_for_causal_lm([("w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20", "w30 w31 w32")],
                                                     tokenizer, args, eot=3)[0]
    assert len(ids) == 12 and ids[0] == 3 and ids[-3:] == [30, 31, 32], "the first text is cut, the pair kept"


# ---- an encoder: LTG-BERT ----

def bert_tokenizer(vocab_size=60):
    """The tiny word-level tokenizer with the `[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]` template of the zoo's trained
    tokenizers (trainers/tokenization.py)."""
    tokenizer = tiny_tokenizer(vocab_size)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer


@pytest.fixture
def masked_lm_export(tmp_path):
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(LtgBertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, position_bucket_size=8, pad_token_id=0))
    return export(model.eval(), bert_tokenizer(), tmp_path / "mlm"), model


def encoder_args(**overrides):
    return classification_config.ClassificationArguments(**{
        "model_name_or_path": "unused", "train_file": "unused", "eval_file": "unused", "labels": "0=no,1=yes",
        "max_seq_length": 16, **overrides})


def words(*numbers):
    return " ".join(f"w{n}" for n in numbers)


def test_encoder_trunk_is_taken_over_strictly_and_the_head_is_new(masked_lm_export, caplog):
    folder, masked_lm = masked_lm_export
    with caplog.at_level(logging.INFO, logger=classification_config.__name__):
        classifier = classification_config.classifier_from_export(folder, ["no", "yes"])
    assert type(classifier).__name__ == "LtgBertForSequenceClassification"
    trunk, taken = masked_lm.ltg_bert.state_dict(), classifier.ltg_bert.state_dict()
    assert set(taken) == set(trunk) and all(torch.equal(tensor, trunk[key]) for key, tensor in taken.items())
    head = {key: tensor for key, tensor in classifier.state_dict().items() if not key.startswith("ltg_bert.")}
    assert sorted(head) == ["classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias",
                            "classifier.out_proj.weight"]
    assert head["classifier.out_proj.weight"].shape == (2, 32)
    assert not torch.equal(head["classifier.dense.weight"], masked_lm.lm_head.dense.weight), "a fresh head"
    assert classifier.config.id2label == {0: "no", 1: "yes"} and classifier.config.num_labels == 2
    assert "dropped ['lm_head.decoder.bias', 'lm_head.decoder.weight', 'lm_head.dense.bias', " \
           "'lm_head.dense.weight']" in caplog.text


def test_encoder_examples_follow_the_tokenizer_template(masked_lm_export):
    folder, _ = masked_lm_export
    config = classification_config.classifier_from_export(folder, ["no", "yes"]).config
    tokenizer = bert_tokenizer()
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    word = tokenizer.convert_tokens_to_ids
    single = classification_config.encode([words(10, 11, 12)], [1], tokenizer, encoder_args(), config)
    assert single["input_ids"] == [[cls, *word(["w10", "w11", "w12"]), sep]] and single["labels"] == [1]
    assert single["attention_mask"] == [[1] * 5]
    pair = classification_config.encode([(words(10, 11), words(20, 21, 22))], [0], tokenizer, encoder_args(), config)
    assert pair["input_ids"] == [[cls, *word(["w10", "w11"]), sep, *word(["w20", "w21", "w22"]), sep]]


def test_encoder_truncation_keeps_the_special_tokens_and_cuts_the_longer_text(masked_lm_export):
    folder, _ = masked_lm_export
    config = classification_config.classifier_from_export(folder, ["no", "yes"]).config
    tokenizer = bert_tokenizer()
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    word = tokenizer.convert_tokens_to_ids
    long_text, short_text = words(*range(10, 20)), words(30, 31)

    def encoded(texts, max_seq_length):
        return classification_config.encode(texts, [0] * len(texts), tokenizer,
                                            encoder_args(max_seq_length=max_seq_length), config)["input_ids"]

    assert encoded([long_text], 5) == [[cls, *word(["w10", "w11", "w12"]), sep]]
    assert encoded([(long_text, short_text)], 8) == [[cls, *word(["w10", "w11", "w12"]), sep, *word(["w30", "w31"]),
                                                      sep]], "the longer (first) text is cut"
    assert encoded([(short_text, long_text)], 8) == [[cls, *word(["w30", "w31"]), sep, *word(["w10", "w11", "w12"]),
                                                      sep]], "the longer (second) text is cut"
    with pytest.raises(ValueError, match="leaves no room"):
        encoded([(long_text, short_text)], 4)


def test_encoder_arguments_that_do_not_fit_are_refused(masked_lm_export):
    folder, _ = masked_lm_export
    config = classification_config.classifier_from_export(folder, ["no", "yes"]).config
    with pytest.raises(ValueError, match="pair_separator=' \\| ' is for causal LMs"):
        classification_config.check_encoding(encoder_args(pair_separator=" | "), config, bert_tokenizer())
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings \\(32\\)"):
        classification_config.check_encoding(encoder_args(max_seq_length=33), config, bert_tokenizer())
    left = bert_tokenizer()
    left.padding_side = "left"  # would move [CLS] off the first position, which the classifier reads
    classification_config.check_encoding(encoder_args(), config, left)
    assert left.padding_side == "right"
    plain = tiny_tokenizer(60)  # no template: its encodings do not begin with [CLS], which the classifier reads
    with pytest.raises(ValueError, match="does not begin its encodings with a \\[CLS\\] token"):
        classification_config.encode([words(10, 11)], [0], plain, encoder_args(), config)


def write_keyword_task(path, rows=320, seed=0, keyword=7):
    """Label 1 when `w<keyword>` occurs anywhere in the sentence (half the rows): only attention from [CLS] to every
    position can tell."""
    rng = random.Random(seed)
    others = [n for n in range(5, 60) if n != keyword]
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        numbers = [rng.choice(others) for _ in range(rng.randrange(3, 9))]
        label = rng.random() < 0.5
        if label:
            numbers[rng.randrange(len(numbers))] = keyword
        lines.append(f"{words(*numbers)}\t{int(label)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_encoder_fine_tuning_learns_a_learnable_task(masked_lm_export, tmp_path, capsys):
    folder, _ = masked_lm_export
    args = run_classification.parse([
        "--model_name_or_path", str(folder), "--train_file", str(write_keyword_task(tmp_path / "train.tsv")),
        "--eval_file", str(write_keyword_task(tmp_path / "test.tsv", rows=200, seed=1)), "--labels", "0=no,1=yes",
        "--max_seq_length", "16", "--output_dir", str(tmp_path / "out"), "--max_steps", "120",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--seed", "0", "--task_name", "keyword"])
    assert run_classification.main(*args) == 0
    result = json.loads((tmp_path / "out" / "classification.json").read_text())
    assert result["accuracy"] > 0.9 and result["accuracy"] > result["majority_baseline_accuracy"] + 0.1
    assert not result["collapsed"] and result["num_items"] == 200
    assert sum(sum(row) for row in result["confusion_matrix"]["matrix"]) == 200
    assert "LtgBertForSequenceClassification, pooled at [CLS]" in result["mode"]
    assert "keyword: accuracy" in capsys.readouterr().out
    assert "Confusion matrix" in (tmp_path / "out" / "classification.md").read_text()
    exported = json.loads((tmp_path / "out" / "export" / "config.json").read_text())
    assert exported["architectures"] == ["LtgBertForSequenceClassification"]
    assert exported["id2label"] == {"0": "no", "1": "yes"}
    assert (tmp_path / "out" / "export" / "model.safetensors").is_file()


def test_an_export_without_a_sequence_classifier_is_refused_before_training(tmp_path, monkeypatch):
    torch.manual_seed(0)
    mdlm = MdlmForMaskedDiffusionLM(MdlmConfig(
        vocab_size=60, mask_token_id=4, pad_token_id=0, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        cond_dim=8, max_position_embeddings=32, timestep_embedding_size=16))
    folder = export(mdlm.eval(), tiny_tokenizer(60), tmp_path / "mdlm")

    def no_loading(*_, **__):
        raise AssertionError("the weights were loaded before the refusal")

    monkeypatch.setattr(classification_config, "load_checkpoint", no_loading)
    args = run_classification.parse([
        "--model_name_or_path", str(folder), "--train_file", str(write_keyword_task(tmp_path / "train.tsv")),
        "--eval_file", str(write_keyword_task(tmp_path / "test.tsv", rows=20)), "--labels", "0=no,1=yes",
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"])
    with pytest.raises(ValueError, match=r"holds a 'mdlm' model, and the zoo has no sequence classifier "
                                         r"\(AutoModelForSequenceClassification\).*\['ltg_bert', 'modded_gpt'\]"):
        run_classification.main(*args)
    assert not (tmp_path / "out" / "export").exists()
