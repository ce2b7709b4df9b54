"""Pretrain a modded-nanogpt GPT as a causal LM, export it as a verified `trust_remote_code` Hub folder, report the
held-out perplexity and print a few greedy continuations.

    accelerate launch trainers/run_modded_gpt.py                                      # tiny model, embedded corpus
    accelerate launch trainers/run_modded_gpt.py trainers/configs/modded_gpt_small.yaml

Without a config file it runs `trainers/configs/modded_gpt_tiny.yaml` (and says so). A new model must state
hidden_size, num_hidden_layers, num_attention_heads and head_dim in `config_overrides` (everything else has the
speedrun's defaults); `init_from` continues from an export or a converted speedrun checkpoint, loaded strictly. The
vocabulary (padded to a multiple of 128), the EOT id and the pad id always come from the tokenizer: GPT-2's
(`tokenizer_name`: a Hub id or a folder with its vocab.json/merges.txt) or a BPE trained on the data, whose [SEP]
then separates documents. Documents are packed into rows that start anywhere; EOT opens each document and the
model's document masking keeps them apart. Outputs in `output_dir`: Trainer checkpoints (each with a verified
`export/`), the final `export/`, `loss_curve.png`, `results.json` and `samples.txt`.
"""

import logging
import sys
from pathlib import Path

from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from trainers.adapters import adapter_card
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.clm_config import (CausalLMTrainingArguments, build_datasets, build_model, check_model_arguments,
                                 evaluate_export, model_card, obtain_gpt_tokenizer, perplexity_metric)
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.compiled import fixed_batch_width
from trainers.finishing import finish_run, run_callbacks
from trainers.mlm_data import load_texts
from trainers.preflight import check_before_training

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "modded_gpt_tiny.yaml"


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(model_args, training_args)
    set_seed(training_args.seed)
    train_texts, eval_texts = load_texts(data_args, seed=training_args.seed)
    tokenizer = obtain_gpt_tokenizer(model_args, training_args, train_texts)
    model = build_model(model_args, training_args, tokenizer, data_args.max_seq_length)
    train_set, eval_set = build_datasets(data_args, training_args, tokenizer, model.config.eot_token_id, train_texts,
                                         eval_texts)
    logger.info("%s: %s parameters, %d train / %d eval rows of %d tokens; %d process(es)", type(model).__name__,
                f"{model.num_parameters():,}", len(train_set), len(eval_set), data_args.max_seq_length,
                training_args.world_size)
    card = adapter_card(model_card(model, data_args, training_args, len(train_texts)), training_args.peft,
                        training_args.init_from)
    check_before_training(training_args.output_dir, model=model, tokenizer=tokenizer, card=card)
    trainer = CausalLMTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer,
                              data_collator=CausalLMCollator(tokenizer.pad_token_id, len(tokenizer), fixed_batch_width(
                                  training_args, data_args.max_seq_length, data_args.packing)),
                              callbacks=run_callbacks(training_args, tokenizer, card))
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    card.metrics = [perplexity_metric(data_args, metrics["eval_loss"])]
    trained = dict(train_steps=trainer.state.global_step, train_runtime_s=train_output.metrics.get("train_runtime"))
    finish_run(trainer, tokenizer, card,
               lambda folder: evaluate_export(folder, training_args, data_args, metrics["eval_loss"], len(eval_set),
                                              trained),
               loss_label="cross-entropy (nats per token)")


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        logger.warning("no config file given: using %s", DEFAULT_CONFIG)
        argv.insert(0, str(DEFAULT_CONFIG))
    return parse_args((ModelArguments, DataArguments, CausalLMTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
