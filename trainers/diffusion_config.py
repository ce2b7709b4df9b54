"""The masked-diffusion objective (MDLM, BD3-LM) as `run_mdlm.py` trains it: the training arguments, the model and
the datasets built from the run's arguments, the model card, and the evaluation of the final export (NELBO perplexity
bound, BLiMP by ELBO, samples)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from eval_suites.blimp import evaluate_blimp, load_pairs
from eval_suites.blimp import markdown_report as blimp_report
from eval_suites.perplexity import markdown_report, perplexity_report
from hub_exports import CardInfo, Metric, full_fp32_matmuls, load_checkpoint, load_tokenizer
from modeling import DIFFUSION_POLICIES, diffusion_policy
from trainers.adapters import check_peft_base, with_peft
from trainers.arguments import RunTrainingArguments
from trainers.collators import PROMPT_MASK
from trainers.embedded_corpus import write_minimal_pairs
from trainers.finishing import RunReport
from trainers.mlm_data import chunk_sentences, pack_into_blocks
from trainers.preflight import check_overrides
from trainers.prompt_completion_data import completion_end_token, file_format, tokenize_prompt_completions

OBJECTIVES = ("unconditional", "prompt_conditioned")


@dataclass
class DiffusionTrainingArguments(RunTrainingArguments):
    """`TrainingArguments` with the originals' defaults (AdamW 3e-4, no weight decay, constant LR after 2500 warmup
    steps, gradient clipping 1.0) plus the masked-diffusion knobs."""

    algorithm: str = field(default="mdlm", metadata={"help": "'mdlm' or 'bd3lm'.", "choices": list(DIFFUSION_POLICIES)})
    objective: str = field(
        default="unconditional",
        metadata={"help": "'unconditional': the NELBO of whole rows of text; 'prompt_conditioned': prompt-completion "
                          "data (columns prompt, completion), the prompt never masked nor scored, the NELBO per "
                          "completion token.", "choices": list(OBJECTIVES)},
    )
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "Start from this checkpoint: a hubzoo export/checkpoint folder (loaded strictly: a missing "
                          "or unexpected key, the BD3-LM sampling buffers included, is an error)."},
    )
    ema_decay: float = field(default=0.9999, metadata={"help": "EMA decay of the weights used to evaluate and export; "
                                                              "0 turns the EMA off."})
    nelbo_samples: int = field(default=8, metadata={"help": "Monte-Carlo draws per held-out sequence for the final "
                                                           "NELBO perplexity bound."})
    nelbo_max_sequences: int = field(default=256, metadata={"help": "Held-out sequences in the final bound."})
    blimp_pairs_per_paradigm: Optional[int] = field(
        default=None,
        metadata={"help": "Score only the first N pairs of each BLiMP paradigm at the end (default: all)."},
    )
    num_samples_to_print: int = field(default=3, metadata={"help": "Sequences sampled from the export at the end."})
    sampling_steps: int = field(default=128, metadata={"help": "Denoising steps of those samples (MDLM: in total; "
                                                            "BD3-LM: per block)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate (the originals': 3e-4)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (the originals': 0)."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "LR schedule (the originals': "
                                                                                   "constant with warmup)."})
    warmup_steps: float = field(default=2500, metadata={"help": "Warmup steps (the originals': 2500)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (the originals': 1.0)."})

    @property
    def prompt_conditioned(self) -> bool:
        return self.objective == "prompt_conditioned"


def check_objective(data_args, training_args) -> None:
    """Refuse, before any work, data arguments that do not fit the prompt-conditioned objective (missing, or that it
    would ignore)."""
    if not training_args.prompt_conditioned:
        return
    if not (data_args.train_file or data_args.dataset_name):
        raise ValueError("objective prompt_conditioned needs prompt-completion data: train_file (.json/.jsonl/.csv/"
                         ".tsv with columns prompt and completion) or dataset_name; the embedded corpus has no "
                         "prompts")
    for path in (data_args.train_file, data_args.validation_file):
        if path:
            file_format(path)
    if data_args.packing:
        raise ValueError("objective prompt_conditioned makes one row per prompt-completion example: set packing: "
                         "false")
    if data_args.text_column != "text":
        raise ValueError(f"objective prompt_conditioned reads the columns prompt and completion; text_column "
                         f"{data_args.text_column!r} would be ignored")


def check_model_arguments(model_args, training_args) -> None:
    check_peft_base(training_args.peft, training_args.init_from, output_dir=training_args.output_dir,
                    tokenizer_name=model_args.tokenizer_name)
    if training_args.peft and model_args.config_overrides:
        raise ValueError("peft with config_overrides: an adapter repo holds no config, so its users (and the run's "
                         "own evaluation of its export) would load the base's settings, not the overridden ones")
    policy = DIFFUSION_POLICIES[training_args.algorithm]
    check_overrides(model_args.config_overrides, policy.config_class, required=policy.required_fields,
                    set_by_run=("vocab_size", "mask_token_id", "pad_token_id", "bos_token_id",
                                "max_position_embeddings"),
                    init_from=training_args.init_from, can_init_from=True)


def build_model(model_args, training_args, tokenizer, max_seq_length: int):
    """A new model from `config_overrides` (every architecture field stated), or `init_from` loaded strictly (with
    `peft`: wrapped for LoRA training; the EMA then averages what is trained, the adapter)."""
    check_model_arguments(model_args, training_args)
    overrides = dict(model_args.config_overrides)
    if training_args.init_from:
        model = load_checkpoint(training_args.init_from)  # strict: refuses missing/unexpected keys
        if diffusion_policy(model) is not DIFFUSION_POLICIES[training_args.algorithm]:
            raise ValueError(f"init_from holds a {model.config.model_type} model, the run trains "
                             f"{training_args.algorithm}")
        if model.config.mask_token_id != tokenizer.mask_token_id or model.config.vocab_size < len(tokenizer):
            raise ValueError("init_from's mask id / vocabulary do not match the tokenizer; pass its tokenizer "
                             "with tokenizer_name")
        if max_seq_length > model.config.max_position_embeddings:
            raise ValueError(f"max_seq_length {max_seq_length} exceeds init_from's max_position_embeddings "
                             f"{model.config.max_position_embeddings}")
        apply_overrides(model, overrides)
        return with_peft(model, training_args.peft, training_args.init_from)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("masked diffusion needs a tokenizer with [MASK] and [PAD] tokens")
    policy = DIFFUSION_POLICIES[training_args.algorithm]
    config = policy.config_class(**overrides, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=row_start_token(tokenizer),
                                 max_position_embeddings=max_seq_length)
    return policy.model_class(config)


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
    its [CLS], which then becomes its BOS. BD3-LM never masks it (`ignore_bos`) and its sampler fixes it at position 0
    (`config.bos_token_id`); a tokenizer without a BOS would have transformers' Trainer reset that id to None."""
    if tokenizer.bos_token_id is None:
        if tokenizer.cls_token is None:
            raise ValueError("the tokenizer has neither a BOS nor a [CLS] token to start each row with")
        tokenizer.bos_token = tokenizer.cls_token
    return tokenizer.bos_token_id


def example_texts(examples, training_args) -> list:
    """The texts of the examples, e.g. to train a tokenizer on."""
    if training_args.prompt_conditioned:
        return [prompt + completion for prompt, completion in examples]
    return examples


def build_datasets(data_args, training_args, tokenizer, train_examples, eval_examples):
    """Rows of max_seq_length tokens (at most, unpacked), each starting with `row_start_token`: packed or chunked
    text, or one prompt-completion example per row."""
    def to_examples(examples):
        if training_args.prompt_conditioned:
            return tokenize_prompt_completions(examples, tokenizer, data_args.max_seq_length,
                                               row_start_token(tokenizer),
                                               completion_end_token(tokenizer, tokenizer.mask_token_id))
        if data_args.packing:
            return pack_into_blocks(examples, tokenizer, data_args.max_seq_length,
                                    row_start_id=row_start_token(tokenizer))
        return chunk_sentences(examples, tokenizer, data_args.max_seq_length)

    with training_args.main_process_first(desc="tokenize"):
        return to_examples(train_examples), to_examples(eval_examples)


PROMPTED_PROCEDURE = (" conditioned on a prompt: one prompt-completion example per row, filled with EOS, the prompt "
                      "never masked and not scored, the loss per completion token")


def model_card(model, data_args, training_args, num_lines: int) -> CardInfo:
    source = data_args.train_file or data_args.dataset_name
    prompted = training_args.prompt_conditioned
    examples = "prompt-completion pairs" if prompted else "lines"
    return CardInfo(
        description=f"{DIFFUSION_POLICIES[training_args.algorithm].display_name} ({model.num_parameters():,} parameters) trained "
                    f"by hubzoo; the weights are the EMA (decay {training_args.ema_decay}) of the trained ones.",
        training_data=(f"{num_lines:,} {examples} from {source}" if source else
                       f"The hubzoo embedded corpus: {num_lines:,} generated English-like sentences "
                       f"(seed {training_args.seed})."),
        training_procedure=(f"Continuous-time masked-diffusion NELBO (log-linear schedule, antithetic t, SUBS)"
                            f"{PROMPTED_PROCEDURE if prompted else ''}, rows of {data_args.max_seq_length} tokens, "
                            f"AdamW lr {training_args.learning_rate}, {training_args.lr_scheduler_type} schedule."),
        limitations="A small research model. exp(NELBO) is an upper bound on perplexity, not a perplexity.",
    )


def evaluate_export(data_args, training_args, folder: Path, eval_set, eval_loss: float, train_steps: int) -> RunReport:
    """Score and sample the export as a user loads it (fp32, from its files): the NELBO perplexity bound on the
    held-out rows, BLiMP by ELBO, and `num_samples_to_print` samples (in samples.txt): from all-mask, or, for the
    prompt-conditioned objective, completions of that many held-out prompts (their agreement with the reference
    completion tokens is reported)."""
    model = load_checkpoint(folder).to(training_args.device)
    tokenizer = load_tokenizer(folder)  # an adapter repo's is its base's
    rows = [list(ids) for ids in eval_set["input_ids"][:training_args.nelbo_max_sequences]]
    with full_fp32_matmuls():
        bound = perplexity_report(model, rows, num_samples=training_args.nelbo_samples, seed=training_args.seed)
        sample_options = dict(num_steps=training_args.sampling_steps, seed=training_args.seed,
                              **DIFFUSION_POLICIES[training_args.algorithm].sample_kwargs)
        if training_args.prompt_conditioned:
            prompted = prompted_completions(model, eval_set, training_args.num_samples_to_print, sample_options)
            samples = prompted.pop("sample_ids")
        else:
            prompted = {}
            samples = model.sample(num_samples=training_args.num_samples_to_print, **sample_options)
        pairs_dir = data_args.blimp_dir or write_minimal_pairs(Path(training_args.output_dir) / "blimp_pairs")
        pairs = load_pairs(pairs_dir, limit_per_paradigm=training_args.blimp_pairs_per_paradigm)
        blimp = evaluate_blimp(model, tokenizer, pairs, scorer="elbo",  # a batch as evaluation's
                               token_budget=training_args.per_device_eval_batch_size * data_args.max_seq_length)
    texts = tokenizer.batch_decode(samples, skip_special_tokens=True)
    name = "held-out split" if not data_args.validation_file else Path(data_args.validation_file).name
    blimp_name = Path(pairs_dir).name
    return RunReport(
        results={"perplexity_bound": bound, "blimp": blimp, "samples": texts,
                 "mask_tokens_in_samples": int((samples == model.config.mask_token_id).sum()),
                 "eval_loss": eval_loss, "train_steps": train_steps, **prompted},
        files={"samples.txt": "\n\n".join(texts) + "\n"},
        card_metrics=[Metric("text-generation", name, "local", "perplexity", round(bound["perplexity"], 3),
                             metric_name="NELBO perplexity bound"),
                      Metric("text-scoring", blimp_name, "blimp", "accuracy", round(blimp["accuracy"], 4),
                             metric_name="BLiMP (ELBO, shared noise)")],
        card_section=(markdown_report(bound, title=f"NELBO perplexity bound ({name})") + "\n"
                      + blimp_report(blimp, title=f"BLiMP ({blimp_name}, ELBO)")),
        lines=summary_lines(bound, blimp, texts))


def prompted_completions(model, eval_set, count: int, sample_options: dict) -> dict:
    """Complete the first `count` held-out prompts (every non-prompt position masked) and compare with the reference
    completions: the share of completion tokens (EOS fill included) drawn equal to the reference."""
    rows = eval_set.select(range(min(count, len(eval_set))))
    reference = torch.tensor(rows["input_ids"], device=model.device)
    kept = torch.tensor(rows[PROMPT_MASK], device=model.device).bool()
    samples = model.sample(input_ids=reference.masked_fill(~kept, model.config.mask_token_id), **sample_options)
    agreement = (samples == reference)[~kept].float().mean().item()
    return {"sample_ids": samples, "prompted_completion_token_agreement": round(agreement, 4),
            "prompted_completions": len(rows)}


def summary_lines(bound: dict, blimp: dict, samples) -> list:
    per_paradigm = ", ".join(f"{k} {v:.3f}" for k, v in blimp["per_paradigm"].items())
    return [f"NELBO perplexity bound {bound['perplexity']:.2f} (NLL {bound['nll_per_token']:.4f} ± "
            f"{bound['standard_error']:.4f} nats/token, {bound['num_tokens']:,} held-out tokens, "
            f"{bound['num_samples']} draws)",
            f"BLiMP accuracy (ELBO) {blimp['accuracy']:.4f} ({blimp['num_pairs']} pairs, {blimp['num_paradigms']} "
            f"paradigms; per paradigm: {per_paradigm})",
            *(f"sample {index}: {text[:300]}" for index, text in enumerate(samples))]
