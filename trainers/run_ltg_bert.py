"""Train LTG-BERT with masked-LM, export it as a verified `trust_remote_code` Hub folder, and score it on BLiMP.

    accelerate launch trainers/run_ltg_bert.py trainers/configs/ltg_bert_tiny.yaml
    accelerate launch trainers/run_ltg_bert.py trainers/configs/ltg_bert_small.yaml --train_file corpus.txt

A config states the model's size (`config_overrides`: hidden_size, num_hidden_layers, num_attention_heads,
intermediate_size), or `init_from` names an export to continue pretraining (loaded strictly; `peft` then trains a
LoRA adapter of it instead of every weight). Without `train_file`/`dataset_name` it trains on the embedded corpus
(generated, no downloads) and scores its own minimal pairs. The tokenizer is trained on the training text unless
`tokenizer_name` is given (or init_from's is used); `vocab_size` and the special ids are read from it. Outputs in `output_dir`: Trainer checkpoints (each with a verified
`export/`), the final `export/`, `loss_curve.png`, `blimp.json` and `blimp.md`.
"""

import json
import logging
from pathlib import Path

from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from eval_suites.blimp import evaluate_blimp, load_pairs, markdown_report
from hub_exports import CardInfo, Metric, full_fp32_matmuls, load_checkpoint, load_tokenizer
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from trainers.adapters import adapter_card, check_peft_base, with_peft
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.collators import MaskedLMCollator, MaskingEpochCallback
from trainers.compiled import fixed_batch_width
from trainers.embedded_corpus import write_minimal_pairs
from trainers.finishing import RunReport, finish_run, run_callbacks
from trainers.mlm_config import MaskedLMTrainingArguments
from trainers.mlm_data import chunk_sentences, load_texts, pack_into_blocks
from trainers.mlm_trainer import MaskedLMTrainer
from trainers.preflight import check_before_training, check_overrides, load_init_from
from trainers.tokenization import obtain_tokenizer

logger = logging.getLogger(__name__)
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def check_model_arguments(model_args, training_args) -> None:
    check_peft_base(training_args.peft, training_args.init_from, output_dir=training_args.output_dir,
                    tokenizer_name=model_args.tokenizer_name)
    if training_args.init_from and model_args.config_overrides:
        raise ValueError("with init_from, config_overrides must be empty: the checkpoint is continued as it was saved")
    check_overrides(model_args.config_overrides, LtgBertConfig, required=SIZE_FIELDS,
                    set_by_run=("vocab_size", "pad_token_id"), init_from=training_args.init_from)


def build_model(model_args, training_args, tokenizer, max_seq_length: int):
    """A new LTG-BERT sized by `config_overrides`, or `init_from` continued (with `peft`: wrapped for LoRA)."""
    check_model_arguments(model_args, training_args)
    if training_args.init_from:
        model = load_init_from(training_args.init_from, LtgBertForMaskedLM, tokenizer, max_seq_length)
        return with_peft(model, training_args.peft, training_args.init_from)
    config = LtgBertConfig(
        **{"max_position_embeddings": max(512, max_seq_length), **model_args.config_overrides},
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    return LtgBertForMaskedLM(config)


def model_card(model, data_args, training_args, num_lines: int) -> CardInfo:
    source = data_args.train_file or data_args.dataset_name
    return CardInfo(
        description=f"LTG-BERT ({model.num_parameters():,} parameters) trained with masked-LM by hubzoo.",
        training_data=(f"{num_lines:,} lines from {source}" if source else
                       f"The hubzoo embedded corpus: {num_lines:,} generated English-like sentences "
                       f"(seed {training_args.seed}) with number agreement across distractors."),
        training_procedure=(f"Masked-LM ({training_args.mask_strategy} masking of {training_args.mask_probability:.0%}"
                            f" of tokens, 80/10/10), examples of {data_args.max_seq_length} tokens "
                            f"({'packed' if data_args.packing else 'sentence-aware chunks'}), learning rate "
                            f"{training_args.learning_rate}."),
        limitations="A small research model; its training data is synthetic unless stated above.",
    )


def score_blimp(data_args, training_args, folder: Path) -> RunReport:
    """Score the export as a user would load it (fp32, from its files), not the in-memory training model, which may
    still carry the mixed-precision forward that Trainer installed."""
    model = load_checkpoint(folder).to(training_args.device)
    tokenizer = load_tokenizer(folder)  # an adapter repo's is its base's
    pairs_dir = data_args.blimp_dir or write_minimal_pairs(Path(training_args.output_dir) / "blimp_pairs")
    with full_fp32_matmuls():  # training may have switched TF32 on; scores should match a CPU run
        result = evaluate_blimp(model, tokenizer, load_pairs(pairs_dir), scorer=training_args.blimp_scorer,
                                token_budget=training_args.blimp_token_budget)
    name = Path(pairs_dir).name
    report = markdown_report(result, title=f"BLiMP ({name})")
    per_paradigm = ", ".join(f"{k} {v:.3f}" for k, v in result["per_paradigm"].items())
    return RunReport(
        results={"blimp": result}, files={"blimp.json": json.dumps(result, indent=2) + "\n", "blimp.md": report},
        card_metrics=[Metric("text-scoring", name, "blimp", "accuracy", round(result["accuracy"], 4),
                             metric_name=f"BLiMP ({training_args.blimp_scorer})")], card_section=report,
        lines=[f"BLiMP accuracy {result['accuracy']:.4f} ({result['num_pairs']} pairs, {result['num_paradigms']} "
               f"paradigms; per paradigm: {per_paradigm})"])


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(model_args, training_args)
    set_seed(training_args.seed)
    train_texts, eval_texts = load_texts(data_args, seed=training_args.seed)
    tokenizer = obtain_tokenizer(model_args, training_args, train_texts)
    to_examples = pack_into_blocks if data_args.packing else chunk_sentences
    with training_args.main_process_first(desc="tokenize"):
        train_set = to_examples(train_texts, tokenizer, data_args.max_seq_length)
        eval_set = to_examples(eval_texts, tokenizer, data_args.max_seq_length)
    model = build_model(model_args, training_args, tokenizer, data_args.max_seq_length)
    global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * training_args.world_size)
    logger.info("%s: %s parameters, %d train / %d eval examples; %d process(es), %d examples per optimizer step",
                type(model).__name__, f"{model.num_parameters():,}", len(train_set), len(eval_set),
                training_args.world_size, global_batch)
    card = adapter_card(model_card(model, data_args, training_args, len(train_texts)), training_args.peft,
                        training_args.init_from)
    check_before_training(training_args.output_dir, [data_args.blimp_dir], model, tokenizer, card)
    collator = MaskedLMCollator(tokenizer, mask_probability=training_args.mask_probability,
                                strategy=training_args.mask_strategy,
                                pad_to=fixed_batch_width(training_args, data_args.max_seq_length, data_args.packing))
    trainer = MaskedLMTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer, data_collator=collator,
                              callbacks=[MaskingEpochCallback(collator), *run_callbacks(training_args, tokenizer, card)])
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    source = "hubzoo-embedded" if not data_args.train_file else "local"
    card.metrics = [Metric("fill-mask", "held-out split", source, "loss", round(metrics["eval_loss"], 4),
                           metric_name="masked-LM loss")]
    finish_run(trainer, tokenizer, card, lambda folder: score_blimp(data_args, training_args, folder),
               loss_label="masked-LM loss (nats per masked token)")


def parse(argv=None):
    """(model, data, training) arguments from `argv` (default: the command line): a config file and/or flags."""
    return parse_args((ModelArguments, DataArguments, MaskedLMTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
