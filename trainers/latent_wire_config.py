"""Training a LatentWire for several frozen decoders (`trainers/run_latent_wire.py`): the run's arguments and the
builders the script composes: the questions (SQuAD files or a generated corpus, those too long for the wire dropped),
the wire with its decoders attached, its rows and card, and the end-of-run evaluation of the three conditions (text
prompt, the wire's latents, the text cut to as many tokens) with the verdict."""

import logging
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from eval_suites import wire_conditions
from eval_suites.squad import load_squad
from hub_exports import CardInfo
from modeling.latent_wire import LatentWireConfig, LatentWireModel
from trainers.arguments import RunTrainingArguments
from trainers.demo_decoders import DEMO_DECODERS
from trainers.finishing import RunReport
from trainers.preflight import check_overrides
from trainers.qa_corpus import generate_qa

logger = logging.getLogger(__name__)
WIRE_SIZE_FIELDS = ("num_latents", "hidden_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class WireArguments:
    decoders: List[str] = field(default_factory=list, metadata={
        "help": "name=path or Hub id of each frozen causal LM; none: train the two demo decoders first"})
    train_file: Optional[str] = field(default=None, metadata={"help": "SQuAD-format JSON (default: generated)"})
    eval_file: Optional[str] = field(default=None, metadata={"help": "SQuAD-format JSON (default: generated)"})
    num_train: int = field(default=20000, metadata={"help": "Generated training questions (or a cap on the file)."})
    num_eval: int = field(default=500, metadata={"help": "Generated evaluation questions (or a cap on the file)."})
    corpus_seed: int = field(default=0)
    facts_per_context: int = field(default=4)
    wire_overrides: dict = field(default_factory=dict, metadata={
        "help": "LatentWireConfig fields; its size (num_latents, hidden_size, num_hidden_layers, num_attention_heads) "
                "is required"})
    anchor_text: str = field(default="Answer: ")
    max_bytes: int = field(default=512, metadata={"help": "The wire's longest text in bytes; longer ones dropped."})
    decoder_dtype: str = field(default="float32", metadata={"choices": ["float32", "bfloat16"]})
    demo_decoder_steps: int = field(default=2000)
    demo_decoder_learning_rate: float = field(default=1e-3)
    demo_decoder_batch_size: int = field(default=64)
    demo_decoder_overrides: dict = field(default_factory=dict, metadata={"help": "{name: {config field: value}}"})
    max_new_tokens: int = field(default=12)
    min_new_tokens: int = field(default=0, metadata={"help": "Ban EOS for this many generated tokens."})
    eval_batch_size: int = field(default=64)
    target_ratio: float = field(default=0.9, metadata={"help": "Latent EM must reach this share of text EM ..."})
    target_compression: float = field(default=4.0, metadata={"help": "... at least at this compression."})
    min_text_em: float = field(default=30.0, metadata={"help": "Below this text-prompt EM the comparison shows nothing."})


@dataclass
class LatentWireTrainingArguments(RunTrainingArguments):
    first_token_weight: float = field(default=0.5, metadata={"help": "λ of the first-answer-token cross-entropy."})
    scale_l2: float = field(default=0.05, metadata={"help": "Weight of Σ (adapter scale - 1)² (keeps the prefix "
                                                            "near the decoder's embedding RMS)."})
    distillation_weight: float = field(default=0.0, metadata={
        "help": "Weight of KL(decoder reading the text ‖ decoder reading the prefix) on the answer tokens; needs the "
                "collator's text prompts (anchor_ids)."})
    export_checkpoints: bool = field(
        default=False, metadata={"help": "Write a verified Hub export of the wire into every saved checkpoint "
                                         "(checkpoint-N/export); off unless asked."}
    )
    # The batch holds no `labels`; the answer columns must reach compute_loss.
    remove_unused_columns: bool = field(default=False)

    def __post_init__(self):
        if self.peft:
            raise ValueError("peft: run_latent_wire trains the wire in full and keeps its decoders frozen; it takes no "
                             "LoRA setting")
        super().__post_init__()


def check_overrides_of(args: WireArguments) -> None:
    """The wire states its size; each demo decoder's overrides name a demo decoder and fields of its config."""
    check_overrides(args.wire_overrides, LatentWireConfig, required=WIRE_SIZE_FIELDS,
                    set_by_run=("decoders", "max_position_embeddings"), flag="wire_overrides")
    for name, overrides in args.demo_decoder_overrides.items():
        if name not in DEMO_DECODERS:
            raise ValueError(f"demo_decoder_overrides: no demo decoder {name!r}; they are {list(DEMO_DECODERS)}")
        check_overrides(overrides, DEMO_DECODERS[name][1], flag=f"demo_decoder_overrides[{name!r}]",
                        set_by_run=("vocab_size", "max_position_embeddings", "pad_token_id", "eos_token_id",
                                    "bos_token_id", "tie_word_embeddings"))


def load_records(args: WireArguments):
    """(train, eval) records: the files, or two disjoint generated corpora (different seeds)."""
    if args.train_file:
        train = load_squad(args.train_file, limit=args.num_train)
    else:
        train = generate_qa(args.num_train, args.corpus_seed, args.facts_per_context, prefix="train")
    if args.eval_file:
        evaluation = load_squad(args.eval_file, limit=args.num_eval)
    else:
        evaluation = generate_qa(args.num_eval, args.corpus_seed + 1, args.facts_per_context, prefix="eval")
    return fitting(train, args.max_bytes, "training"), fitting(evaluation, args.max_bytes, "evaluation")


def fitting(records, max_bytes: int, split: str):
    kept = [r for r in records if len(wire_conditions.qa_text(r).encode()) <= max_bytes]
    if len(kept) < len(records):
        logger.warning("%s: dropped %d of %d questions whose text exceeds %d bytes", split, len(records) - len(kept),
                       len(records), max_bytes)
    if not kept:
        raise ValueError(f"no {split} question fits in max_bytes={max_bytes}")
    return kept


def build_wire(args: WireArguments, paths: dict, device) -> LatentWireModel:
    """A new wire sized by `wire_overrides`, each decoder of `paths` ({name: path}) loaded in `decoder_dtype` and
    attached."""
    dtype = torch.bfloat16 if args.decoder_dtype == "bfloat16" else torch.float32
    entries = []
    loaded = {}
    for name, path in paths.items():
        decoder = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"decoder {name!r} ({path}) has no EOS token: its answers could never end")
        loaded[name] = (decoder, tokenizer)
        entries.append({"name": name, "hidden_size": decoder.get_input_embeddings().weight.shape[1],
                        "name_or_path": path, "anchor_text": args.anchor_text})
    config = LatentWireConfig(**args.wire_overrides, decoders=entries, max_position_embeddings=args.max_bytes)
    wire = LatentWireModel(config)
    for name, (decoder, tokenizer) in loaded.items():
        wire.attach_decoder(name, decoder, tokenizer)
    return wire


def wire_rows(records) -> Dataset:
    """The rows LatentWireCollator takes: each question's text and its first answer."""
    return Dataset.from_list([{"text": wire_conditions.qa_text(r), "answer": r["answers"][0]} for r in records])


def wire_card(wire, paths: dict, args: WireArguments, num_questions: int) -> CardInfo:
    return CardInfo(description=f"A LatentWire ({wire.num_parameters():,} parameters) for the decoders "
                                f"{', '.join(f'{n} ({p})' for n, p in paths.items())}, trained by hubzoo.",
                    training_data=f"{num_questions:,} questions ({args.train_file or 'generated QA corpus'})")


def verdict(result: dict, args: WireArguments) -> List[str]:
    """One line per decoder. The target is met when latent EM reaches `target_ratio` × text EM at least at
    `target_compression`, with the truncated text far below (at most half the latent EM); it is not shown at all when
    the decoder cannot answer from the text itself (text EM under `min_text_em`: every condition is then guessing)."""
    lines = []
    for name, per_decoder in result["decoders"].items():
        text, latent = per_decoder["text"]["exact_match"], per_decoder["latent"]["exact_match"]
        truncated, compression = per_decoder["truncated"]["exact_match"], per_decoder["compression"]
        ratio = latent / text if text else float("nan")
        if text < args.min_text_em:
            outcome = f"NOT SHOWN (text EM under {args.min_text_em:g}: the decoder cannot answer from the text)"
        elif ratio >= args.target_ratio and compression >= args.target_compression and truncated <= latent / 2:
            outcome = "MET"
        else:
            outcome = "MISSED"
        lines.append(f"{name}: latent EM {latent:.1f} = {ratio:.2f} × text EM {text:.1f} (truncated {truncated:.1f}) at "
                     f"{compression:.1f}× compression: target {outcome}")
    return lines


def evaluate_wire(wire, records, byte_tokenizer, args: WireArguments, trained: dict) -> RunReport:
    """The three conditions per decoder on `records`, read through the trained wire in memory, and the verdict;
    `trained`: what the results record of the run (steps, decoders, size). metrics.json and predictions.jsonl are
    written by `wire_conditions.write_results`; results.json holds the same metrics."""
    wire.eval()
    result = wire_conditions.evaluate_conditions(
        wire, records, byte_tokenizer, batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens)
    lines = verdict(result, args)
    result.update(verdict=lines, **trained)
    report = wire_conditions.markdown_report(result) + "\n" + "\n".join(f"* {line}" for line in lines) + "\n"
    return RunReport(results={key: value for key, value in result.items() if key != "predictions"}, lines=lines,
                     files={"results.md": report}, write=lambda output: wire_conditions.write_results(result, output))
