"""Fine-tune an exported causal LM of the zoo (trained or converted) for sequence classification, report accuracy,
macro-F1, the confusion matrix and the predicted-class distribution with a collapse flag, and export the classifier.

    accelerate launch trainers/run_classification.py trainers/configs/classify_sst2.yaml --model_name_or_path EXPORT

The trunk is loaded strictly from the causal LM (every trunk tensor must be there; its LM head is dropped, said in
the log); the classification head starts fresh. Inputs are `[EOT] text` (or `[EOT] text <pair_separator> pair` for
pairs such as XNLI's premise and hypothesis), truncated from the end of the first text, and the class is read at the
last real token. Exit status 3 when the classifier collapsed onto one class (see `eval_suites/metrics/
classification`). Outputs in `output_dir`: `export/` (verified), `classification.json` and `classification.md`.
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, set_seed

import modeling
from eval_suites.classification import classification_metrics, load_examples, markdown_report, parse_label_spec
from hub_exports import CardInfo, Metric, add_results_to_card, export, load_checkpoint, load_tokenizer
from trainers.arguments import ClassificationTrainingArguments, parse_args
from trainers.callbacks import TimeBudgetCallback, finish_on_main_process
from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.muon import MuonOptimizerMixin
from trainers.preflight import check_before_training

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


class ClassificationTrainer(CompleteCheckpointsMixin, MuonOptimizerMixin, Trainer):
    """Trainer with the Muon option; the loss is the model's (a mean over the micro-batch's examples, which is the
    step mean under gradient accumulation because every micro-batch but the last has the same size)."""


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


def main(args: ClassificationArguments, training_args: ClassificationTrainingArguments) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    label_spec = parse_label_spec(args.labels)
    values, names = list(label_spec), list(label_spec.values())
    tokenizer = load_tokenizer(args.model_name_or_path)
    model = classifier_from_causal_lm(args.model_name_or_path, names)
    eot = model.config.eot_token_id
    train_texts, train_labels = load_split(args.train_file, args, values, args.max_train_examples)
    eval_texts, eval_labels = load_split(args.eval_file, args, values, args.max_eval_examples)
    train_set = encode(train_texts, train_labels, tokenizer, args, eot)
    eval_set = encode(eval_texts, eval_labels, tokenizer, args, eot)
    logger.info("%d training / %d evaluation examples, classes %s", len(train_set), len(eval_set), names)
    card = CardInfo(description=f"A {model.config.model_type} classifier fine-tuned by hubzoo from "
                                f"{args.model_name_or_path} on {args.task_name}.",
                    training_data=f"{len(train_set):,} examples of {args.train_file}")
    check_before_training(training_args.output_dir, model=model, tokenizer=tokenizer, card=card)
    trainer = ClassificationTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                                    processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    if training_args.max_train_minutes:
        trainer.add_callback(TimeBudgetCallback(training_args.max_train_minutes))
    trainer.train()
    logits = trainer.predict(eval_set).predictions
    result = classification_metrics(np.argmax(logits, axis=-1).tolist(), eval_labels, names,
                                     training_args.collapse_margin)
    result.update(task=args.task_name, mode=f"fine-tuned classification head ({type(model).__name__}, pooled at the "
                                           "last real token)", num_train_examples=len(train_set),
                  train_steps=trainer.state.global_step, model=str(args.model_name_or_path))

    def export_and_report():
        output = Path(training_args.output_dir)
        report = markdown_report(result, title=f"{args.task_name}: fine-tuned classifier")
        (output / "classification.json").write_text(json.dumps(result, indent=2) + "\n")
        (output / "classification.md").write_text(report)
        card.training_procedure = (f"{trainer.state.global_step} steps, {training_args.optimizer}, lr "
                                   f"{training_args.learning_rate}, batch {training_args.per_device_train_batch_size}.")
        folder = export(model, tokenizer, output / "export", card=card)
        add_results_to_card(folder, [Metric("text-classification", args.task_name, "local", "accuracy",
                                            round(result["accuracy"], 4))], report)
        print(f"{args.task_name}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, majority "
              f"baseline {result['majority_baseline_accuracy']:.4f} over {result['num_items']} items; predicted "
              f"{ {k: v['share'] for k, v in result['predicted_distribution'].items()} }; collapsed: "
              f"{'YES' if result['collapsed'] else 'no'}")
        print(f"Exported and verified: {folder}")

    exit_code = 3 if result["collapsed"] else 0
    finish_on_main_process(trainer, export_and_report, exit_code)
    return exit_code


def parse(argv=None):
    return parse_args((ClassificationArguments, ClassificationTrainingArguments), argv)


if __name__ == "__main__":
    sys.exit(main(*parse()))
