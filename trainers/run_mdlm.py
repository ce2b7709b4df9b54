"""Train a masked diffusion LM (MDLM, or BD3-LM with `--algorithm bd3lm`), export its EMA weights as a verified
`trust_remote_code` Hub folder, report the NELBO perplexity bound on held-out text and BLiMP accuracy by ELBO, and
print a few samples.

    accelerate launch trainers/run_mdlm.py                                   # tiny MDLM on the embedded corpus
    accelerate launch trainers/run_mdlm.py trainers/configs/bd3lm_small.yaml --train_file corpus.txt

Without a config file it runs `trainers/configs/mdlm_tiny.yaml` (and says so). A config must state the architecture
(`config_overrides`: hidden_size, num_hidden_layers, num_attention_heads, cond_dim, and block_size for BD3-LM) unless
`init_from` names a checkpoint, which is then loaded strictly. Outputs in `output_dir`: Trainer checkpoints (each with
`ema.safetensors` and a verified `export/`), the final `export/`, `loss_curve.png`, `results.json` and `samples.txt`.
"""

import json
import logging
import sys
from pathlib import Path

from transformers import AutoTokenizer, set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from eval_suites.blimp import evaluate_blimp, load_pairs
from eval_suites.blimp import markdown_report as blimp_report
from eval_suites.perplexity import markdown_report, perplexity_report
from hub_exports import CardInfo, Metric, add_results_to_card, export, full_fp32_matmuls, load_checkpoint
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from trainers.arguments import (DIFFUSION_REQUIRED_FIELDS, DataArguments, DiffusionTrainingArguments, ModelArguments,
                                parse_args)
from trainers.callbacks import (ExportCheckpointCallback, TimeBudgetCallback, finish_on_main_process,
                                plot_loss_curve)
from trainers.collators import DiffusionCollator
from trainers.diffusion_trainer import MaskedDiffusionTrainer
from trainers.embedded_corpus import write_minimal_pairs
from trainers.mlm_data import chunk_sentences, load_texts, pack_into_blocks
from trainers.preflight import check_before_training, check_overrides
from trainers.tokenization import obtain_tokenizer

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "mdlm_tiny.yaml"
CLASSES = {"mdlm": (MdlmConfig, MdlmForMaskedDiffusionLM), "bd3lm": (Bd3lmConfig, Bd3lmForMaskedDiffusionLM)}


def check_model_arguments(model_args, training_args) -> None:
    check_overrides(model_args.config_overrides, CLASSES[training_args.algorithm][0],
                    required=DIFFUSION_REQUIRED_FIELDS[training_args.algorithm],
                    set_by_run=("vocab_size", "mask_token_id", "pad_token_id", "bos_token_id",
                                "max_position_embeddings"),
                    init_from=training_args.init_from, can_init_from=True)


def build_model(model_args, training_args, tokenizer, max_seq_length: int):
    """A new model from `config_overrides` (every architecture field stated), or `init_from` loaded strictly."""
    check_model_arguments(model_args, training_args)
    algorithm, overrides = training_args.algorithm, dict(model_args.config_overrides)
    if training_args.init_from:
        model = load_checkpoint(training_args.init_from)  # strict: refuses missing/unexpected keys
        if model.config.model_type != algorithm:
            raise ValueError(f"init_from holds a {model.config.model_type} model, the run trains {algorithm}")
        if model.config.mask_token_id != tokenizer.mask_token_id or model.config.vocab_size < len(tokenizer):
            raise ValueError("init_from's mask id / vocabulary do not match the tokenizer; pass its tokenizer "
                             "with tokenizer_name")
        if max_seq_length > model.config.max_position_embeddings:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds init_from's max_position_embeddings "
                             f"{model.config.max_position_embeddings}")
        apply_overrides(model, overrides)
        return model
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("masked diffusion needs a tokenizer with [MASK] and [PAD] tokens")
    config_class, model_class = CLASSES[algorithm]
    config = config_class(**overrides, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=row_start_token(tokenizer),
                          max_position_embeddings=max_seq_length)
    return model_class(config)


def apply_overrides(model, overrides: dict) -> None:
    """Change fields of a loaded model's config (e.g. a smaller block_size to fine-tune a BD3-LM), validated as a new
    config would be; the sampling interval goes to the BD3-LM buffers, which training reads."""
    merged = {**model.config.to_dict(), **overrides}
    type(model.config)(**merged)  # raises on an invalid combination
    interval = {name: overrides.pop(name) for name in ("sampling_eps_min", "sampling_eps_max") if name in overrides}
    if interval:
        model.set_sampling_interval(merged["sampling_eps_min"], merged["sampling_eps_max"])
    for name, value in overrides.items():
        setattr(model.config, name, value)


def row_start_token(tokenizer) -> int:
    """The token every packed row starts with, as the originals' wrapped rows start with BOS: the tokenizer's BOS, or
    its [CLS]. BD3-LM never masks it (`ignore_bos`) and its sampler fixes it at position 0 (`config.bos_token_id`)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor a [CLS] token to start each row with")
    return token


def build_datasets(data_args, training_args, tokenizer, train_texts, eval_texts):
    """Packed rows of max_seq_length tokens, each starting with `row_start_token`."""
    def to_examples(texts):
        if data_args.packing:
            return pack_into_blocks(texts, tokenizer, data_args.max_seq_length, row_start_id=row_start_token(tokenizer))
        return chunk_sentences(texts, tokenizer, data_args.max_seq_length)

    with training_args.main_process_first(desc="tokenize"):
        return to_examples(train_texts), to_examples(eval_texts)


def model_card(model, data_args, training_args, num_lines: int) -> CardInfo:
    source = data_args.train_file or data_args.dataset_name
    name = "BD3-LM" if training_args.algorithm == "bd3lm" else "MDLM"
    return CardInfo(
        description=f"{name} ({model.num_parameters():,} parameters) trained by hubzoo; the weights are the EMA "
                    f"(decay {training_args.ema_decay}) of the trained ones.",
        training_data=(f"{num_lines:,} lines from {source}" if source else
                       f"The hubzoo embedded corpus: {num_lines:,} generated English-like sentences "
                       f"(seed {training_args.seed})."),
        training_procedure=(f"Continuous-time masked-diffusion NELBO (log-linear schedule, antithetic t, SUBS), rows "
                            f"of {data_args.max_seq_length} tokens, AdamW lr {training_args.learning_rate}, "
                            f"{training_args.lr_scheduler_type} schedule."),
        limitations="A small research model. exp(NELBO) is an upper bound on perplexity, not a perplexity.",
    )


def final_report(model_args, data_args, training_args, folder: Path, eval_set) -> dict:
    """Score and sample the export as a user loads it (fp32, from its files)."""
    model = load_checkpoint(folder).to(training_args.device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [list(ids) for ids in eval_set["input_ids"][:training_args.nelbo_max_sequences]]
    with full_fp32_matmuls():
        bound = perplexity_report(model, rows, num_samples=training_args.nelbo_samples, seed=training_args.seed)
        if training_args.algorithm == "bd3lm":
            samples = model.sample(num_samples=training_args.num_samples_to_print,
                                   num_steps=training_args.sampling_steps, top_p=0.9, seed=training_args.seed)
        else:
            samples = model.sample(num_samples=training_args.num_samples_to_print,
                                   num_steps=training_args.sampling_steps, seed=training_args.seed)
        pairs_dir = data_args.blimp_dir or write_minimal_pairs(Path(training_args.output_dir) / "blimp_pairs")
        pairs = load_pairs(pairs_dir, limit_per_paradigm=training_args.blimp_pairs_per_paradigm)
        blimp = evaluate_blimp(model, tokenizer, pairs, scorer="elbo",  # a batch as evaluation's
                               token_budget=training_args.per_device_eval_batch_size * data_args.max_seq_length)
    texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
    output = Path(training_args.output_dir)
    (output / "samples.txt").write_text("\n\n".join(texts) + "\n")
    name = "held-out split" if not data_args.validation_file else Path(data_args.validation_file).name
    blimp_name = Path(pairs_dir).name
    add_results_to_card(folder, [Metric("text-generation", name, "local", "perplexity", round(bound["perplexity"], 3),
                                        metric_name="NELBO perplexity bound"),
                                 Metric("text-scoring", blimp_name, "blimp", "accuracy", round(blimp["accuracy"], 4),
                                        metric_name="BLiMP (ELBO, shared noise)")],
                        markdown_report(bound, title=f"NELBO perplexity bound ({name})") + "\n"
                        + blimp_report(blimp, title=f"BLiMP ({blimp_name}, ELBO)"))
    return {"perplexity_bound": bound, "blimp": blimp, "samples": texts,
            "mask_tokens_in_samples": int((samples == model.config.mask_token_id).sum())}


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(model_args, training_args)
    set_seed(training_args.seed)
    train_texts, eval_texts = load_texts(data_args, seed=training_args.seed)
    tokenizer = obtain_tokenizer(model_args, training_args, train_texts)
    train_set, eval_set = build_datasets(data_args, training_args, tokenizer, train_texts, eval_texts)
    model = build_model(model_args, training_args, tokenizer, data_args.max_seq_length)
    logger.info("%s: %s parameters, %d train / %d eval rows of %d tokens; %d process(es)", type(model).__name__,
                f"{model.num_parameters():,}", len(train_set), len(eval_set), data_args.max_seq_length,
                training_args.world_size)
    card = model_card(model, data_args, training_args, len(train_texts))
    check_before_training(training_args.output_dir, [data_args.blimp_dir], model, tokenizer, card)
    collator = DiffusionCollator(tokenizer.pad_token_id, model.config.mask_token_id, model.config.vocab_size)
    trainer = MaskedDiffusionTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                                     processing_class=tokenizer, data_collator=collator,
                                     ema_decay=training_args.ema_decay)
    if training_args.export_checkpoints:
        trainer.add_callback(ExportCheckpointCallback(tokenizer, card, weights=trainer.averaged_weights))
    if training_args.max_train_minutes:
        trainer.add_callback(TimeBudgetCallback(training_args.max_train_minutes))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)

    def export_and_report():
        output = Path(training_args.output_dir)
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", ylabel="NELBO (nats per token)")
        card.metrics = [Metric("fill-mask", "held-out split", "local", "nelbo", round(metrics["eval_loss"], 4),
                               metric_name="NELBO per token (one draw per row)")]
        with trainer.averaged_weights():
            folder = export(model, tokenizer, output / "export", card=card)  # verified
        report = final_report(model_args, data_args, training_args, folder, eval_set)
        report.update(eval_loss=metrics["eval_loss"], train_steps=trainer.state.global_step)
        (output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        bound = report["perplexity_bound"]
        print(f"NELBO perplexity bound {bound['perplexity']:.2f} (NLL {bound['nll_per_token']:.4f} ± "
              f"{bound['standard_error']:.4f} nats/token, {bound['num_tokens']:,} held-out tokens, "
              f"{bound['num_samples']} draws)")
        blimp = report["blimp"]
        print(f"BLiMP accuracy (ELBO) {blimp['accuracy']:.4f} ({blimp['num_pairs']} pairs, {blimp['num_paradigms']} "
              f"paradigms; per paradigm: {', '.join(f'{k} {v:.3f}' for k, v in blimp['per_paradigm'].items())})")
        for index, text in enumerate(report["samples"]):
            print(f"sample {index}: {text[:300]}")
        print(f"Exported and verified: {folder}")

    finish_on_main_process(trainer, export_and_report)


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
