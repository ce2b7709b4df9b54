"""Train a Backpack LM — or its baseline, transformers' own `GPT2LMHeadModel` of the same width, depth and heads, with
the same script, data, tokenizer and optimizer (`--architecture gpt2`) — as a causal LM on parallel English–French
text, then report held-out perplexity, translation by prompting (corpus BLEU and chrF), word similarity and, for the
Backpack, sense figures.

    accelerate launch trainers/run_backpack.py trainers/configs/backpack_enfr_small.yaml
    accelerate launch trainers/run_backpack.py trainers/configs/backpack_enfr_small.yaml --architecture gpt2 \
        --output_dir outputs/gpt2_enfr_small

Each training example is one pair, `<en> english <fr> french<EOS>` (the tags are special tokens), in a row of its own
(padding never counted). The tokenizer is a BPE trained jointly on both languages of the training pairs (or
`tokenizer_name`, e.g. xlm-roberta-base when the Hub is reachable, with the tags added). Outputs in `output_dir`:
`export/` (the Backpack as a verified hubzoo export; the baseline as a plain transformers folder), `results.json`,
`results.md`, and for the Backpack `senses.png` and `contextualization.png`.
"""

import logging
from pathlib import Path

from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from trainers.adapters import adapter_card
from trainers.arguments import MuonTrainingArguments, parse_args
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.compiled import fixed_batch_width
from trainers.finishing import finish_run, run_callbacks
from trainers.preflight import check_before_training
from trainers.translation_config import (ParallelArguments, build_model, check_model_arguments, encode_pairs,
                                         evaluate_run, held_out_rows, is_exported, model_card, obtain_tokenizer,
                                         read_pairs, save_plain)

logger = logging.getLogger(__name__)


def main(args: ParallelArguments, training_args: MuonTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(args, training_args.peft, training_args.output_dir)
    set_seed(training_args.seed)
    english, french = read_pairs(args.source_train, args.target_train, args.max_train_pairs)
    tokenizer = obtain_tokenizer(args, training_args, english, french)
    train_set, eval_set = encode_pairs(tokenizer, args, english, french), held_out_rows(tokenizer, args)
    model = build_model(args, tokenizer, training_args.peft)
    logger.info("%s: %s parameters, %d train / %d eval pairs", type(model).__name__, f"{model.num_parameters():,}",
                len(train_set), len(eval_set))
    card = adapter_card(model_card(model, args, training_args, len(train_set)), training_args.peft,
                        args.init_from) if is_exported(model) else None
    check_before_training(training_args.output_dir, [args.source_test, args.target_test, args.word_similarity_dir],
                          model, tokenizer, card)
    trainer = CausalLMTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer,
                              data_collator=CausalLMCollator(tokenizer.pad_token_id, len(tokenizer),
                                                             fixed_batch_width(training_args, args.max_seq_length)),
                              callbacks=run_callbacks(training_args, tokenizer, card))
    train_output = trainer.train()
    metrics = trainer.evaluate()
    trained = dict(train_steps=trainer.state.global_step, train_runtime_s=train_output.metrics.get("train_runtime"))
    # The model in memory is evaluated, as trained (the export only copies its weights).
    finish_run(trainer, tokenizer, card,
               lambda folder: evaluate_run(model, tokenizer, args, training_args, Path(trainer.args.output_dir),
                                           metrics["eval_loss"], len(eval_set), trained),
               loss_label="cross-entropy (nats per token)",
               save=None if is_exported(model) else lambda folder: save_plain(model, tokenizer, folder))


def parse(argv=None):
    return parse_args((ParallelArguments, MuonTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
