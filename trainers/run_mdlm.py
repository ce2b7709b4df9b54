"""Train a masked diffusion LM (MDLM, or BD3-LM with `--algorithm bd3lm`), export its EMA weights as a verified
`trust_remote_code` Hub folder, report the NELBO perplexity bound on held-out text and BLiMP accuracy by ELBO, and
print a few samples.

    accelerate launch trainers/run_mdlm.py                                   # tiny MDLM on the embedded corpus
    accelerate launch trainers/run_mdlm.py trainers/configs/bd3lm_small.yaml --train_file corpus.txt

Without a config file it runs `trainers/configs/mdlm_tiny.yaml` (and says so). A config must state the architecture
(`config_overrides`: hidden_size, num_hidden_layers, num_attention_heads, cond_dim, and block_size for BD3-LM) unless
`init_from` names a checkpoint, which is then loaded strictly. `objective: prompt_conditioned` trains on
prompt-completion data, the prompt never masked (`trainers/configs/mdlm_owt_prompted.yaml`). Outputs in
`output_dir`: Trainer checkpoints (each with `ema.safetensors` and a verified `export/`), the final `export/`,
`loss_curve.png`, `results.json` and `samples.txt`.
The objective's arguments, builders and final evaluation are in `trainers/diffusion_config.py`.
"""

import logging
import sys
from pathlib import Path

from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from hub_exports import Metric
from trainers.adapters import adapter_card
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.collators import DiffusionCollator
from trainers.compiled import fixed_batch_width
from trainers.diffusion_config import (DiffusionTrainingArguments, build_datasets, build_model, check_model_arguments,
                                       check_objective, evaluate_export, example_texts, model_card)
from trainers.diffusion_trainer import MaskedDiffusionTrainer
from trainers.finishing import finish_run, run_callbacks
from trainers.mlm_data import load_texts
from trainers.preflight import check_before_training
from trainers.prompt_completion_data import load_prompt_completions
from trainers.tokenization import obtain_tokenizer

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "mdlm_tiny.yaml"


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(model_args, training_args)
    check_objective(data_args, training_args)
    set_seed(training_args.seed)
    load = load_prompt_completions if training_args.prompt_conditioned else load_texts  # pairs, or lines of text
    train_examples, eval_examples = load(data_args, seed=training_args.seed)
    tokenizer = obtain_tokenizer(model_args, training_args, example_texts(train_examples, training_args))
    train_set, eval_set = build_datasets(data_args, training_args, tokenizer, train_examples, eval_examples)
    model = build_model(model_args, training_args, tokenizer, data_args.max_seq_length)
    logger.info("%s: %s parameters, %d train / %d eval rows of %d tokens; %d process(es)", type(model).__name__,
                f"{model.num_parameters():,}", len(train_set), len(eval_set), data_args.max_seq_length,
                training_args.world_size)
    card = adapter_card(model_card(model, data_args, training_args, len(train_examples)), training_args.peft,
                        training_args.init_from)
    check_before_training(training_args.output_dir, [data_args.blimp_dir], model, tokenizer, card)
    collator = DiffusionCollator(tokenizer.pad_token_id, model.config.mask_token_id, model.config.vocab_size,
                                 fixed_batch_width(training_args, data_args.max_seq_length, data_args.packing))
    trainer = MaskedDiffusionTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                                     processing_class=tokenizer, data_collator=collator,
                                     ema_decay=training_args.ema_decay)
    for callback in run_callbacks(training_args, tokenizer, card, weights=trainer.averaged_weights):
        trainer.add_callback(callback)  # after construction: the EMA to export is the trainer's
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    card.metrics = [Metric("fill-mask", "held-out split", "local", "nelbo", round(metrics["eval_loss"], 4),
                           metric_name="NELBO per token (one draw per row)")]
    finish_run(trainer, tokenizer, card,
               lambda folder: evaluate_export(data_args, training_args, folder, eval_set, metrics["eval_loss"],
                                              trainer.state.global_step),
               loss_label="NELBO (nats per token)", weights=trainer.averaged_weights)


def parse(argv=None, algorithm=None):
    """Arguments from `argv` (default: the command line); without a config file, the algorithm's tiny preset."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        default = DEFAULT_CONFIG.with_name(f"{algorithm}_tiny.yaml") if algorithm else DEFAULT_CONFIG
        logger.warning("no config file given: using %s", default)
        argv.insert(0, str(default))
    if algorithm:
        argv += ["--algorithm", algorithm]
    return parse_args((ModelArguments, DataArguments, DiffusionTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
