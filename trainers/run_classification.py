"""Fine-tune an exported model of the zoo (trained or converted) for sequence classification, report accuracy,
macro-F1, the confusion matrix and the predicted-class distribution with a collapse flag, and export the classifier.
Any architecture with a sequence classifier: a causal LM (modded GPT) or a masked LM (LTG-BERT, the BabyLM-style
(Super)GLUE fine-tuning); an export whose architecture has none (MDLM, say) is refused before its weights are loaded.

    accelerate launch trainers/run_classification.py trainers/configs/classify_sst2.yaml --model_name_or_path EXPORT
    accelerate launch trainers/run_classification.py trainers/configs/classify_sst2_ltg_bert.yaml

The trunk is loaded strictly from the export (every trunk tensor must be there; its own head, e.g. the LM head, is
dropped, said in the log); the classification head starts fresh. The encoding follows the architecture: a causal LM
reads `[EOT] text` (or `[EOT] text <pair_separator> pair` for pairs such as XNLI's premise and hypothesis), truncated
from the end of the first text, and the class is read at the last real token; an encoder reads its tokenizer's
template, `[CLS] text [SEP]` (or `[CLS] text [SEP] pair [SEP]`), truncated `longest_first` with the special tokens
kept, and the class is read at [CLS]. Exit status 3 when the classifier collapsed onto one class (see
`eval_suites/metrics/classification`). Outputs in `output_dir`: `export/` (verified), `classification.json`,
`classification.md` and `results.json` (the same results). The arguments, builders and report are in
`trainers/classification_config.py`.
"""

import logging
import sys

from transformers import DataCollatorWithPadding, set_seed

from eval_suites.classification import parse_label_spec
from hub_exports import load_tokenizer
from trainers.adapters import adapter_card, check_peft_base, with_peft
from trainers.arguments import parse_args
from trainers.classification_config import (ClassificationArguments, ClassificationTrainingArguments, build_datasets,
                                            classification_report, classifier_from_export, evaluate_classifier,
                                            check_lora_base_labels, head_modules, model_card, training_procedure)
from trainers.classification_trainer import ClassificationTrainer
from trainers.compiled import fixed_batch_width
from trainers.finishing import finish_run, run_callbacks
from trainers.preflight import check_before_training

logger = logging.getLogger(__name__)
COLLAPSED_EXIT_STATUS = 3


def padding_collator(tokenizer, max_seq_length: int, training_args) -> DataCollatorWithPadding:
    """Batches padded to their longest example; to `max_seq_length` under torch_compile (one shape per step)."""
    width = fixed_batch_width(training_args, max_seq_length)
    if width is None:
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=width)


def main(args: ClassificationArguments, training_args: ClassificationTrainingArguments) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_peft_base(training_args.peft, args.model_name_or_path, flag="model_name_or_path",
                    output_dir=training_args.output_dir)
    set_seed(training_args.seed)
    label_spec = parse_label_spec(args.labels)
    values, names = list(label_spec), list(label_spec.values())
    tokenizer = load_tokenizer(args.model_name_or_path)
    if training_args.peft:
        check_lora_base_labels(args.model_name_or_path, names)
    model = classifier_from_export(args.model_name_or_path, names)
    # With peft, LoRA trains the trunk's adapter and the new head in full; the export is an adapter repo over the
    # language-model export, loaded as this classifier with its labels (hub_exports/adapters.py)
    model = with_peft(model, training_args.peft, args.model_name_or_path, extra_modules_to_save=head_modules(model))
    train_set, eval_set = build_datasets(args, tokenizer, values, model.config)
    logger.info("%d training / %d evaluation examples, classes %s", len(train_set), len(eval_set), names)
    card = adapter_card(model_card(model, args, len(train_set)), training_args.peft, args.model_name_or_path)
    check_before_training(training_args.output_dir, model=model, tokenizer=tokenizer, card=card)
    trainer = ClassificationTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                                    processing_class=tokenizer,
                                    data_collator=padding_collator(tokenizer, args.max_seq_length, training_args),
                                    callbacks=run_callbacks(training_args))  # the time budget; no checkpoint exports
    trainer.train()
    result = evaluate_classifier(trainer, eval_set, args, names)
    card.training_procedure = training_procedure(trainer)
    exit_code = COLLAPSED_EXIT_STATUS if result["collapsed"] else 0
    finish_run(trainer, tokenizer, card, lambda folder: classification_report(result, args), exit_code=exit_code)
    return exit_code


def parse(argv=None):
    return parse_args((ClassificationArguments, ClassificationTrainingArguments), argv)


if __name__ == "__main__":
    sys.exit(main(*parse()))
