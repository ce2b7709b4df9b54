"""Sequence-classification fine-tuning of an exported causal LM, as `run_classification.py` runs it: the arguments,
the classifier over the causal LM's trunk, the encoded examples, the model card, and the report (accuracy, macro-F1,
confusion matrix, predicted-class distribution with the collapse flag)."""

import json
import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from datasets import Dataset

import modeling
from eval_suites.classification import classification_metrics, load_examples, markdown_report
from hub_exports import CardInfo, Metric, load_checkpoint
from trainers.arguments import MuonTrainingArguments
from trainers.finishing import RunReport

logger = logging.getLogger(__name__)


@dataclass
class ClassificationArguments:
    model_name_or_path: str = field(metadata={"help": "Exported hubzoo causal LM (folder) to start from."})
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
    pair_separator: str = field(default="\n", metadata={"help": "Joins text and pair (never EOT: it would open a new "
                                                                "document the last token cannot see across)."})
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


def classifier_from_causal_lm(folder, label_names):
    """The zoo's sequence-classification class over the causal LM's trunk, loaded strictly; a fresh head."""
    causal_lm = load_checkpoint(folder)  # strict
    model_type = causal_lm.config.model_type
    classes = modeling.ARCHITECTURES[model_type][1]
    if "AutoModelForSequenceClassification" not in classes or "AutoModelForCausalLM" not in classes:
        raise ValueError(f"{folder} holds a {model_type} model; the zoo has no causal-LM classifier for it")
    config = causal_lm.config
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.architectures = None
    classifier = classes["AutoModelForSequenceClassification"](config)
    prefix = classifier.base_model_prefix
    getattr(classifier, prefix).load_state_dict(getattr(causal_lm, prefix).state_dict(), strict=True)
    trunk = {f"{prefix}.{key}" for key in getattr(classifier, prefix).state_dict()}
    logger.info("trunk loaded strictly from %s; dropped %s; new head %s", folder,
                sorted(set(causal_lm.state_dict()) - trunk), sorted(set(classifier.state_dict()) - trunk))
    return classifier


def encode(texts, labels, tokenizer, args: ClassificationArguments, eot: int) -> Dataset:
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
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": labels})


def load_split(path, args: ClassificationArguments, values, limit):
    columns = args.column_names.split(",") if args.column_names else None
    return load_examples(path, args.text_column, args.label_column, values, limit=limit,
                         text_pair_column=args.text_pair_column, column_names=columns)


def build_datasets(args: ClassificationArguments, tokenizer, label_values, eot: int):
    """The encoded training and evaluation examples; a label's class id is its position in `label_values`."""
    train_texts, train_labels = load_split(args.train_file, args, label_values, args.max_train_examples)
    eval_texts, eval_labels = load_split(args.eval_file, args, label_values, args.max_eval_examples)
    return (encode(train_texts, train_labels, tokenizer, args, eot),
            encode(eval_texts, eval_labels, tokenizer, args, eot))


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
    result.update(task=args.task_name, mode=f"fine-tuned classification head ({type(model).__name__}, pooled at the "
                                           "last real token)", num_train_examples=len(trainer.train_dataset),
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
