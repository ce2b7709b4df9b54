"""Sequence-classification fine-tuning of an exported zoo model, as `run_classification.py` runs it: the arguments,
the classifier over the export's trunk, the examples encoded the way the architecture reads them, the model card, and
the report (accuracy, macro-F1, confusion matrix, predicted-class distribution with the collapse flag).

Two encodings, chosen from the architecture (never from a flag): a causal LM (modded GPT) reads `[EOT] text` or
`[EOT] text <pair_separator> pair` and classifies at the last real token; an encoder (LTG-BERT) reads its tokenizer's
own template, `[CLS] text [SEP]` or `[CLS] text [SEP] pair [SEP]`, and classifies at [CLS], the first position."""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from datasets import Dataset

import modeling
from eval_suites.classification import classification_metrics, load_examples, markdown_report
from hub_exports import CardInfo, Metric, load_checkpoint
from trainers.arguments import MuonTrainingArguments
from trainers.finishing import RunReport

logger = logging.getLogger(__name__)
DEFAULT_PAIR_SEPARATOR = "\n"


@dataclass
class ClassificationArguments:
    model_name_or_path: str = field(metadata={"help": "Exported hubzoo model (folder) to start from; its architecture "
                                                      "must have a sequence classifier (modded GPT, LTG-BERT)."})
    train_file: str = field(metadata={"help": "Training examples (.tsv with a header, or headerless with "
                                              "column_names; .csv, .json, .jsonl)."})
    eval_file: str = field(metadata={"help": "Examples to report on (same format)."})
    labels: str = field(metadata={"help": "Raw label values and class names in class order, e.g. "
                                          "'0=negative,1=positive'."})
    text_column: str = field(default="sentence")
    text_pair_column: Optional[str] = field(default=None, metadata={"help": "Second text (e.g. the hypothesis)."})
    label_column: str = field(default="label")
    column_names: Optional[str] = field(default=None, metadata={"help": "Comma-separated names of the columns of a "
                                                                        "headerless TSV/CSV (XNLI)."})
    pair_separator: str = field(default=DEFAULT_PAIR_SEPARATOR, metadata={
        "help": "Causal LMs only: joins text and pair (never EOT: it would open a new document the last token cannot "
                "see across). An encoder joins them with its tokenizer's pair template, so other values are refused."})
    max_seq_length: int = field(default=128)
    max_train_examples: Optional[int] = field(default=None)
    max_eval_examples: Optional[int] = field(default=None)
    task_name: str = field(default="classification", metadata={"help": "Names the dataset in the card and report."})


@dataclass
class ClassificationTrainingArguments(MuonTrainingArguments):
    """Sequence-classification fine-tuning: the optimizer knobs plus the collapse check of the report."""

    collapse_margin: float = field(
        default=0.25, metadata={"help": "Flag a collapse when one class takes this much more of the predictions than "
                                        "of the gold labels (see eval_suites/metrics/classification)."}
    )


def is_causal_lm(config) -> bool:
    """Whether the zoo architecture of `config` is a causal LM: its classifier reads `[EOT] text` at the last real
    token. Otherwise it is an encoder, read at [CLS] on its tokenizer's template."""
    return "AutoModelForCausalLM" in modeling.ARCHITECTURES[config.model_type][1]


def pooled_at(config) -> str:
    return "the last real token" if is_causal_lm(config) else "[CLS], the first position"


def sequence_classifier_class(folder):
    """The zoo's `AutoModelForSequenceClassification` class for the export in `folder`, read from its config; an
    architecture without one is refused by name before any weight is loaded."""
    model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    classes = modeling.ARCHITECTURES.get(model_type, (None, {}))[1]
    if "AutoModelForSequenceClassification" not in classes:
        able = sorted(name for name, (_, auto) in modeling.ARCHITECTURES.items()
                      if "AutoModelForSequenceClassification" in auto)
        raise ValueError(f"{folder} holds a {model_type!r} model, and the zoo has no sequence classifier "
                         f"(AutoModelForSequenceClassification) for that architecture; those that have one: {able}")
    return classes["AutoModelForSequenceClassification"]


def classifier_from_export(folder, label_names):
    """The architecture's sequence classifier over the trunk of the export in `folder` (a causal LM, a masked LM or
    any other head of it), loaded strictly: every trunk tensor must be there. The export's own head is dropped and
    named in the log; the classification head starts fresh."""
    classifier_class = sequence_classifier_class(folder)
    pretrained = load_checkpoint(folder)  # strict
    config = pretrained.config
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.architectures = None
    classifier = classifier_class(config)
    classifier.base_model.load_state_dict(pretrained.base_model.state_dict(), strict=True)
    logger.info("trunk loaded strictly from %s; dropped %s; new head %s", folder, _head_keys(pretrained),
                _head_keys(classifier))
    return classifier


def check_lora_base_labels(folder, label_names) -> None:
    """A LoRA classifier over an export that is itself a classifier must keep its labels: the adapter repo loads on
    that export as saved, so other labels would load with the export's names (or fail on the head's shape)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    if not (config.get("architectures") or [""])[0].endswith("ForSequenceClassification"):
        return
    saved = {str(key): value for key, value in (config.get("id2label") or {}).items()}
    wanted = {str(i): name for i, name in enumerate(label_names)}
    if saved != wanted:
        raise ValueError(f"peft over the classifier export {folder}, whose labels are {saved}, with labels {wanted}: "
                         "start from the language-model export instead (the adapter then holds the new head)")


def head_modules(classifier) -> list:
    """The names of the classifier's modules with weights outside its trunk (the new head), which LoRA trains in
    full (`modules_to_save`)."""
    return [name for name, module in classifier.named_children()
            if name != classifier.base_model_prefix and any(True for _ in module.parameters())]


def _head_keys(model) -> list:
    """The state-dict keys of `model` outside its trunk (`base_model`); none for a bare trunk."""
    if model.base_model is model:
        return []
    return sorted(key for key in model.state_dict() if not key.startswith(f"{model.base_model_prefix}."))


def encode_for_causal_lm(texts, tokenizer, args: ClassificationArguments, eot: int) -> list:
    """`[EOT] text` or `[EOT] text sep pair`, cut to max_seq_length from the end of the first text."""
    rows = []
    for text in texts:
        first, pair = (text, None) if isinstance(text, str) else text
        ids = tokenizer(first, add_special_tokens=False).input_ids
        tail = [] if pair is None else tokenizer(args.pair_separator + pair, add_special_tokens=False).input_ids
        room = args.max_seq_length - 1 - len(tail)
        if room < 1:
            tail, room = tail[:args.max_seq_length - 2], 1
        rows.append([eot, *ids[:room], *tail])
    return rows


def encode_for_encoder(texts, tokenizer, args: ClassificationArguments) -> list:
    """The tokenizer's own template, `[CLS] text [SEP]` or `[CLS] text [SEP] pair [SEP]`, cut to max_seq_length by
    transformers' `longest_first` truncation: the special tokens stay, and the longer of the two texts loses a token
    at a time (from its end), so a long premise gives way before a short hypothesis does."""
    pairs = not all(isinstance(text, str) for text in texts)
    needed = tokenizer.num_special_tokens_to_add(pair=pairs) + (2 if pairs else 1)
    if args.max_seq_length < needed:
        raise ValueError(f"max_seq_length={args.max_seq_length} leaves no room for the text{'s' if pairs else ''}: "
                         f"the template needs at least {needed} tokens")
    firsts = [text if isinstance(text, str) else text[0] for text in texts]
    seconds = [text[1] for text in texts] if pairs else None
    rows = tokenizer(firsts, seconds, truncation="longest_first", max_length=args.max_seq_length).input_ids
    cls = tokenizer.cls_token_id
    if cls is None or any(not row or row[0] != cls for row in rows):
        raise ValueError(f"the tokenizer of {args.model_name_or_path} does not begin its encodings with a [CLS] token "
                         f"(cls_token {tokenizer.cls_token!r}, first ids {rows[0][:3] if rows else []}); the encoder's "
                         "classifier reads the first position, so its template must be `[CLS] text [SEP]`")
    return rows


def check_encoding(args: ClassificationArguments, config, tokenizer) -> None:
    """Refuse arguments the architecture of `config` cannot honour; an encoder's tokenizer pads on the right, so that
    [CLS] stays the first position (the exported tokenizer keeps that)."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and args.max_seq_length > limit:
        raise ValueError(f"max_seq_length={args.max_seq_length} exceeds the model's max_position_embeddings ({limit})")
    if is_causal_lm(config):
        return
    if args.pair_separator != DEFAULT_PAIR_SEPARATOR:
        raise ValueError(f"pair_separator={args.pair_separator!r} is for causal LMs; a {config.model_type} encoder "
                         "joins text and pair with its tokenizer's template ([CLS] text [SEP] pair [SEP])")
    if tokenizer.padding_side != "right":
        logger.info("padding on the right (the tokenizer padded on the %s): the classifier reads the first position",
                    tokenizer.padding_side)
        tokenizer.padding_side = "right"


def encode(texts, labels, tokenizer, args: ClassificationArguments, config) -> Dataset:
    """The examples as the classifier of `config` reads them (see the module docstring)."""
    if is_causal_lm(config):
        rows = encode_for_causal_lm(texts, tokenizer, args, config.eot_token_id)
    else:
        rows = encode_for_encoder(texts, tokenizer, args)
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": labels})


def load_split(path, args: ClassificationArguments, values, limit):
    columns = args.column_names.split(",") if args.column_names else None
    return load_examples(path, args.text_column, args.label_column, values, limit=limit,
                         text_pair_column=args.text_pair_column, column_names=columns)


def build_datasets(args: ClassificationArguments, tokenizer, label_values, config):
    """The training and evaluation examples encoded for the classifier of `config`; a label's class id is its
    position in `label_values`."""
    check_encoding(args, config, tokenizer)
    train_texts, train_labels = load_split(args.train_file, args, label_values, args.max_train_examples)
    eval_texts, eval_labels = load_split(args.eval_file, args, label_values, args.max_eval_examples)
    return (encode(train_texts, train_labels, tokenizer, args, config),
            encode(eval_texts, eval_labels, tokenizer, args, config))


def model_card(model, args: ClassificationArguments, num_train_examples: int) -> CardInfo:
    """The card before training; `training_procedure` describes the training once it is done."""
    return CardInfo(description=f"A {model.config.model_type} classifier fine-tuned by hubzoo from "
                                f"{args.model_name_or_path} on {args.task_name}.",
                    training_data=f"{num_train_examples:,} examples of {args.train_file}")


def training_procedure(trainer) -> str:
    return (f"{trainer.state.global_step} steps, {trainer.args.optimizer}, lr {trainer.args.learning_rate}, batch "
            f"{trainer.args.per_device_train_batch_size}.")


def evaluate_classifier(trainer, eval_set, args: ClassificationArguments, label_names) -> dict:
    """The metrics of the trained classifier on `eval_set`, computed on every process (each needs the collapse flag:
    it sets the exit status)."""
    logits = trainer.predict(eval_set).predictions
    result = classification_metrics(np.argmax(logits, axis=-1).tolist(), list(eval_set["labels"]), label_names,
                                    trainer.args.collapse_margin)
    model = trainer.accelerator.unwrap_model(trainer.model)
    result.update(task=args.task_name, mode=f"fine-tuned classification head ({type(model).__name__}, pooled at "
                                           f"{pooled_at(model.config)})", num_train_examples=len(trainer.train_dataset),
                  train_steps=trainer.state.global_step, model=str(args.model_name_or_path))
    return result


def classification_report(result: dict, args: ClassificationArguments) -> RunReport:
    """`result` as classification.json and classification.md, on the card and in one printed line."""
    report = markdown_report(result, title=f"{args.task_name}: fine-tuned classifier")
    shares = {name: counts["share"] for name, counts in result["predicted_distribution"].items()}
    return RunReport(
        results=result, files={"classification.json": json.dumps(result, indent=2) + "\n", "classification.md": report},
        card_metrics=[Metric("text-classification", args.task_name, "local", "accuracy", round(result["accuracy"], 4))],
        card_section=report,
        lines=[f"{args.task_name}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, majority "
               f"baseline {result['majority_baseline_accuracy']:.4f} over {result['num_items']} items; predicted "
               f"{shares}; collapsed: {'YES' if result['collapsed'] else 'no'}"])
