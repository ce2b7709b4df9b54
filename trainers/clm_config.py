"""Causal-LM pretraining of a modded-nanogpt GPT (`trainers/run_modded_gpt.py`): its training arguments and the
builders the script composes: the tokenizer, the model (new, or continued from an export), the datasets, the model
card, and the end-of-run evaluation of the export (held-out perplexity and greedy continuations)."""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from hub_exports import CardInfo, Metric, load_checkpoint, load_tokenizer
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from trainers.adapters import check_peft_base, with_peft
from trainers.arguments import MuonTrainingArguments
from trainers.clm_data import documents_as_rows, pack_documents
from trainers.finishing import RunReport
from trainers.preflight import check_overrides
from trainers.tokenization import document_separator, obtain_tokenizer

# Architecture fields a new modded GPT must state in config_overrides (the rest has the speedrun's defaults).
MODDED_GPT_REQUIRED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim")
PROMPTS = ("The", "In the beginning", "She said that")


@dataclass
class CausalLMTrainingArguments(MuonTrainingArguments):
    """Causal-LM pretraining: the optimizer knobs plus a warm start and the samples printed at the end."""

    init_from: Optional[str] = field(
        default=None, metadata={"help": "Start from this hubzoo export/checkpoint folder (loaded strictly)."}
    )
    num_samples_to_print: int = field(default=3,
                                      metadata={"help": "Continuations generated from the export at the end."})


def check_model_arguments(model_args, training_args) -> None:
    check_peft_base(training_args.peft, training_args.init_from, output_dir=training_args.output_dir,
                    tokenizer_name=model_args.tokenizer_name)
    if training_args.init_from and model_args.config_overrides:
        raise ValueError("with init_from, config_overrides must be empty: the checkpoint is continued as it was saved")
    check_overrides(model_args.config_overrides, ModdedGptConfig, required=MODDED_GPT_REQUIRED_FIELDS,
                    set_by_run=("vocab_size", "tokenizer_vocab_size", "eot_token_id", "pad_token_id", "eos_token_id",
                                "bos_token_id", "max_position_embeddings"),
                    init_from=training_args.init_from, can_init_from=True)


def build_model(model_args, training_args, tokenizer, max_seq_length: int):
    """A new model sized by `config_overrides`, its vocabulary and special ids from the tokenizer; or `init_from`
    continued, which must have been trained with this tokenizer (with `peft`: wrapped for LoRA training)."""
    check_model_arguments(model_args, training_args)
    if training_args.init_from:
        model = continued_model(training_args.init_from, tokenizer, max_seq_length)
    else:
        eot = document_separator(tokenizer)
        config = ModdedGptConfig(**model_args.config_overrides, vocab_size=128 * math.ceil(len(tokenizer) / 128),
                                 tokenizer_vocab_size=len(tokenizer), eot_token_id=eot,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eot, bos_token_id=eot,
                                 max_position_embeddings=max_seq_length)
        model = ModdedGptForCausalLM(config)
    if model_args.attn_implementation:
        if model_args.attn_implementation not in ("sdpa", "flex_attention"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'flex_attention', got "
                             f"{model_args.attn_implementation!r}")
        model.config._attn_implementation = model_args.attn_implementation  # read at every forward
    return with_peft(model, training_args.peft, training_args.init_from)


def continued_model(folder, tokenizer, max_seq_length: int) -> ModdedGptForCausalLM:
    eot = document_separator(tokenizer)
    model = load_checkpoint(folder)  # strict: refuses missing/unexpected keys
    config = model.config
    if not isinstance(config, ModdedGptConfig) or (config.tokenizer_vocab_size, config.eot_token_id) != (len(tokenizer), eot):
        raise ValueError(f"init_from holds {config.model_type} with {config.tokenizer_vocab_size} ids / EOT "
                         f"{config.eot_token_id}; the tokenizer has {len(tokenizer)} / {eot}: pass its tokenizer")
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds init_from's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return model


def obtain_gpt_tokenizer(model_args, training_args, train_texts):
    if model_args.tokenizer_name or training_args.init_from:  # a continued model keeps the tokenizer it was saved with
        return load_tokenizer(model_args.tokenizer_name or training_args.init_from)
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


def held_out_name(data_args) -> str:
    return Path(data_args.validation_file).name if data_args.validation_file else "held-out split"


def perplexity_metric(data_args, eval_loss: float) -> Metric:
    """The card's model-index entry for the held-out perplexity."""
    return Metric("text-generation", held_out_name(data_args), "local", "perplexity", round(math.exp(eval_loss), 3))


def greedy_samples(training_args, folder: Path) -> list:
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
    return samples


def evaluate_export(folder: Path, training_args, data_args, eval_loss: float, eval_rows: int,
                    trained: dict) -> RunReport:
    """The held-out cross-entropy (measured by the trainer: `eval_loss` over `eval_rows` rows) and the export's
    greedy samples; `trained`: the training figures results.json records (steps, runtime)."""
    samples = greedy_samples(training_args, folder)
    perplexity = math.exp(eval_loss)
    results = {"samples": samples, "eval_loss": eval_loss, "perplexity": perplexity, **trained, "eval_rows": eval_rows}
    lines = [f"Held-out perplexity {perplexity:.2f} (cross-entropy {eval_loss:.4f} nats/token, {eval_rows} rows of "
             f"{data_args.max_seq_length} tokens)"]
    lines += [f"sample ({prompt!r}): {text[:300]}" for prompt, text in zip(PROMPTS, samples)]
    return RunReport(results=results, lines=lines,
                     card_section=f"Held-out ({held_out_name(data_args)}) cross-entropy {eval_loss:.4f} nats/token, "
                                  f"perplexity {perplexity:.2f}.\n",
                     files={"samples.txt": "\n\n".join(samples) + "\n"})
