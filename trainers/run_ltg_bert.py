"""Train LTG-BERT with masked-LM, export it as a verified `trust_remote_code` Hub folder.

    accelerate launch trainers/run_ltg_bert.py trainers/configs/ltg_bert_tiny.yaml
    accelerate launch trainers/run_ltg_bert.py trainers/configs/ltg_bert_tiny.yaml --max_steps 10 --output_dir out

Without `train_file` it trains on the embedded default corpus (generated, no downloads). The tokenizer is trained on
the training text unless `tokenizer_name` is given; `vocab_size` and the special ids are read from it.
"""

import logging

import numpy as np
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from hub_exports import CardInfo, Metric, export
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.mlm_data import load_texts, pack_into_blocks
from trainers.tokenization import train_wordpiece_tokenizer

logger = logging.getLogger(__name__)


def build_model(model_args, tokenizer, max_seq_length: int) -> LtgBertForMaskedLM:
    fixed_by_tokenizer = {"vocab_size", "pad_token_id"} & set(model_args.config_overrides)
    if fixed_by_tokenizer:
        raise ValueError(f"config_overrides may not set {sorted(fixed_by_tokenizer)}: they come from the tokenizer")
    config = LtgBertConfig(
        **{"max_position_embeddings": max(512, max_seq_length), **model_args.config_overrides},
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )
    return LtgBertForMaskedLM(config)


def masked_accuracy(eval_prediction) -> dict:
    predictions, labels = eval_prediction
    scored = labels != -100
    return {"masked_accuracy": float((predictions[scored] == labels[scored]).mean()) if scored.any() else 0.0}


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    train_texts, eval_texts = load_texts(data_args, seed=training_args.seed)
    if model_args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    else:
        tokenizer = train_wordpiece_tokenizer(train_texts, model_args.tokenizer_vocab_size)
    with training_args.main_process_first(desc="tokenize and pack"):
        train_set = pack_into_blocks(train_texts, tokenizer, data_args.max_seq_length)
        eval_set = pack_into_blocks(eval_texts, tokenizer, data_args.max_seq_length)
    model = build_model(model_args, tokenizer, data_args.max_seq_length)
    logger.info("%s: %s parameters, %d train / %d eval blocks", type(model).__name__,
                f"{model.num_parameters():,}", len(train_set), len(eval_set))

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
        processing_class=tokenizer, compute_metrics=masked_accuracy,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(dim=-1),
    )
    train_result = trainer.train()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    if not trainer.is_world_process_zero():
        return

    card = CardInfo(
        description=f"LTG-BERT ({model.num_parameters():,} parameters) trained with masked-LM by hubzoo.",
        training_data=(f"{len(train_texts):,} lines from {data_args.train_file}" if data_args.train_file else
                       f"The hubzoo embedded corpus: {len(train_texts):,} generated English-like sentences "
                       f"(seed {training_args.seed}) with number agreement across distractors."),
        training_procedure=(f"{train_result.global_step} steps of masked-LM (15% of tokens, 80/10/10), blocks of "
                            f"{data_args.max_seq_length} tokens, learning rate {training_args.learning_rate}, "
                            f"final training loss {train_result.training_loss:.4f}."),
        limitations="A small research model; its training data is synthetic unless stated above.",
        metrics=[Metric("fill-mask", "held-out split", "hubzoo-embedded", "accuracy",
                        round(metrics["eval_masked_accuracy"], 4), metric_name="masked-token accuracy"),
                 Metric("fill-mask", "held-out split", "hubzoo-embedded", "loss", round(metrics["eval_loss"], 4),
                        metric_name="masked-LM loss")],
    )
    folder = export(model, tokenizer, f"{training_args.output_dir}/export", card=card)  # verifies, logs the report
    print(f"Exported and verified: {folder}")


if __name__ == "__main__":
    main(*parse_args((ModelArguments, DataArguments, TrainingArguments)))
