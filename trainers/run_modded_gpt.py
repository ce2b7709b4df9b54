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

import json
import logging
import math
import sys
from pathlib import Path

import torch
from transformers import set_seed

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from hub_exports import CardInfo, Metric, add_results_to_card, export, load_checkpoint, load_tokenizer
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from trainers.arguments import (MODDED_GPT_REQUIRED_FIELDS, CausalLMTrainingArguments, DataArguments, ModelArguments,
                                parse_args)
from trainers.callbacks import ExportCheckpointCallback, TimeBudgetCallback, finish_on_main_process, plot_loss_curve
from trainers.clm_data import documents_as_rows, pack_documents
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.mlm_data import load_texts
from trainers.preflight import check_before_training, check_overrides
from trainers.tokenization import document_separator, obtain_tokenizer

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "modded_gpt_tiny.yaml"
PROMPTS = ("The", "In the beginning", "She said that")


def check_model_arguments(model_args, training_args) -> None:
    if training_args.init_from and model_args.config_overrides:
        raise ValueError("with init_from, config_overrides must be empty: the checkpoint is continued as it was saved")
    check_overrides(model_args.config_overrides, ModdedGptConfig, required=MODDED_GPT_REQUIRED_FIELDS,
                    set_by_run=("vocab_size", "tokenizer_vocab_size", "eot_token_id", "pad_token_id", "eos_token_id",
                                "bos_token_id", "max_position_embeddings"),
                    init_from=training_args.init_from, can_init_from=True)


def build_model(model_args, training_args, tokenizer, max_seq_length: int):
    check_model_arguments(model_args, training_args)
    overrides = dict(model_args.config_overrides)
    eot = document_separator(tokenizer)
    if training_args.init_from:
        model = load_checkpoint(training_args.init_from)  # strict: refuses missing/unexpected keys
        config = model.config
        if config.model_type != "modded_gpt" or (config.tokenizer_vocab_size, config.eot_token_id) != (len(tokenizer),
                                                                                                      eot):
            raise ValueError(f"init_from holds {config.model_type} with {config.tokenizer_vocab_size} ids / EOT "
                             f"{config.eot_token_id}; the tokenizer has {len(tokenizer)} / {eot}: pass its tokenizer")
        if max_seq_length > config.max_position_embeddings:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds init_from's max_position_embeddings "
                             f"{config.max_position_embeddings}")
        return model
    config = ModdedGptConfig(**overrides, vocab_size=128 * math.ceil(len(tokenizer) / 128),
                             tokenizer_vocab_size=len(tokenizer), eot_token_id=eot, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=eot, bos_token_id=eot, max_position_embeddings=max_seq_length)
    return ModdedGptForCausalLM(config)


def obtain_gpt_tokenizer(model_args, training_args, train_texts):
    if model_args.tokenizer_name:
        return load_tokenizer(model_args.tokenizer_name)
    if model_args.tokenizer_type != "bpe":
        raise ValueError("a causal LM trains a BPE tokenizer: set tokenizer_type: bpe (or give tokenizer_name)")
    return obtain_tokenizer(model_args, training_args, train_texts)


def build_datasets(data_args, training_args, tokenizer, eot, train_texts, eval_texts):
    rows = pack_documents if data_args.packing else documents_as_rows
    with training_args.main_process_first(desc="tokenize"):
        return (rows(train_texts, tokenizer, data_args.max_seq_length, eot),
                rows(eval_texts, tokenizer, data_args.max_seq_length, eot))


def model_card(model, data_args, training_args, num_lines: int) -> CardInfo:
    source = data_args.train_file or data_args.dataset_name
    optimizer = (f"Muon (lr {training_args.muon_learning_rate}) on the blocks' matrices and AdamW (lr "
                 f"{training_args.learning_rate}) on the rest" if training_args.optimizer == "muon"
                 else f"AdamW lr {training_args.learning_rate}")
    rows = "packed documents, document-masked attention" if data_args.packing else "one document per row"
    return CardInfo(
        description=f"A modded-nanogpt GPT ({model.num_parameters():,} parameters) pretrained by hubzoo.",
        training_data=(f"{num_lines:,} lines from {source}" if source else
                       f"The hubzoo embedded corpus: {num_lines:,} generated English-like sentences "
                       f"(seed {training_args.seed})."),
        training_procedure=(f"Next-token cross-entropy on rows of {data_args.max_seq_length} tokens ({rows}), "
                            f"{optimizer}, {training_args.lr_scheduler_type} schedule, "
                            f"{training_args.max_steps} steps."),
        limitations="A small research model; its perplexity is on the held-out split named in the results.",
    )


def final_report(training_args, folder: Path) -> dict:
    """Greedy continuations of a few prompts from the export as a user loads it."""
    model = load_checkpoint(folder).to(training_args.device)
    tokenizer = load_tokenizer(folder)
    samples = []
    for prompt in PROMPTS[:training_args.num_samples_to_print]:
        ids = torch.tensor([[model.config.eot_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]],
                           device=training_args.device)
        length = min(48, model.config.max_position_embeddings - ids.shape[1])
        output = model.generate(ids, max_new_tokens=length, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        samples.append(tokenizer.decode(output[0, 1:], skip_special_tokens=True))
    return {"samples": samples}


def main(model_args, data_args, training_args) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_model_arguments(model_args, training_args)
    set_seed(training_args.seed)
    train_texts, eval_texts = load_texts(data_args, seed=training_args.seed)
    tokenizer = obtain_gpt_tokenizer(model_args, training_args, train_texts)
    model = build_model(model_args, training_args, tokenizer, data_args.max_seq_length)
    if model_args.attn_implementation:
        if model_args.attn_implementation not in ("sdpa", "flex_attention"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'flex_attention', got "
                             f"{model_args.attn_implementation!r}")
        model.config._attn_implementation = model_args.attn_implementation  # read at every forward
    eot = model.config.eot_token_id
    train_set, eval_set = build_datasets(data_args, training_args, tokenizer, eot, train_texts, eval_texts)
    logger.info("%s: %s parameters, %d train / %d eval rows of %d tokens; %d process(es)", type(model).__name__,
                f"{model.num_parameters():,}", len(train_set), len(eval_set), data_args.max_seq_length,
                training_args.world_size)
    card = model_card(model, data_args, training_args, len(train_texts))
    check_before_training(training_args.output_dir, model=model, tokenizer=tokenizer, card=card)
    trainer = CausalLMTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tokenizer,
                              data_collator=CausalLMCollator(tokenizer.pad_token_id, len(tokenizer)))
    if training_args.export_checkpoints:
        trainer.add_callback(ExportCheckpointCallback(tokenizer, card))
    if training_args.max_train_minutes:
        trainer.add_callback(TimeBudgetCallback(training_args.max_train_minutes))
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)

    def export_and_report():
        output = Path(training_args.output_dir)
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", ylabel="cross-entropy (nats per token)")
        perplexity = math.exp(metrics["eval_loss"])
        name = Path(data_args.validation_file).name if data_args.validation_file else "held-out split"
        card.metrics = [Metric("text-generation", name, "local", "perplexity", round(perplexity, 3))]
        folder = export(model, tokenizer, output / "export", card=card)  # verified
        report = final_report(training_args, folder)
        add_results_to_card(folder, [], f"Held-out ({name}) cross-entropy {metrics['eval_loss']:.4f} nats/token, "
                                         f"perplexity {perplexity:.2f}.\n")
        report.update(eval_loss=metrics["eval_loss"], perplexity=perplexity, train_steps=trainer.state.global_step,
                      train_runtime_s=train_output.metrics.get("train_runtime"), eval_rows=len(eval_set))
        (output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (output / "samples.txt").write_text("\n\n".join(report["samples"]) + "\n")
        print(f"Held-out perplexity {perplexity:.2f} (cross-entropy {metrics['eval_loss']:.4f} nats/token, "
              f"{len(eval_set)} rows of {data_args.max_seq_length} tokens)")
        for prompt, text in zip(PROMPTS, report["samples"]):
            print(f"sample ({prompt!r}): {text[:300]}")
        print(f"Exported and verified: {folder}")

    finish_on_main_process(trainer, export_and_report)


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        logger.warning("no config file given: using %s", DEFAULT_CONFIG)
        argv.insert(0, str(DEFAULT_CONFIG))
    return parse_args((ModelArguments, DataArguments, CausalLMTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
