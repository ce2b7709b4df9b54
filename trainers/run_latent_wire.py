"""Train a LatentWire for several frozen decoders and show whether it carries the text: per decoder, question
answering from the full text prompt, from the wire's M latents, and from the text cut to M tokens.

    accelerate launch trainers/run_latent_wire.py trainers/configs/latent_wire_demo.yaml         # the demonstration
    accelerate launch trainers/run_latent_wire.py trainers/configs/latent_wire_demo.yaml \\
        --decoders llama=meta-llama/Llama-3.1-8B-Instruct qwen=Qwen/Qwen2.5-7B-Instruct \\
        --train_file train-v1.1.json --eval_file ../shared/data/squad/dev-v1.1.json --decoder_dtype bfloat16

Without `--decoders`, the decoders are built here: two small, different causal LMs (a Llama and a Qwen2 config,
other widths, depths and byte-level BPEs) trained on the same questions as text first, then frozen. Data: SQuAD-format
JSON files, or a generated corpus of contexts with random facts (`trainers/qa_corpus.py`). Texts longer than
`max_bytes` are dropped and counted, never cut. Outputs in `output_dir`: `decoders/<name>` (demo decoders), `export/`
(the wire, a verified hubzoo export naming its decoders), `metrics.json`, `predictions.jsonl`, `results.md`.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, set_seed)

import modeling  # noqa: F401  (registers the architectures with the Auto classes)
from eval_suites import wire_conditions
from eval_suites.squad import load_squad
from hub_exports import CardInfo, export
from modeling.latent_wire import LatentWireConfig, LatentWireModel, byte_tokenizer
from trainers.arguments import MuonTrainingArguments, parse_args
from trainers.callbacks import TimeBudgetCallback, finish_on_main_process
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.latent_wire_trainer import LatentWireCollator, LatentWireTrainer, LatentWireTrainingArguments
from trainers.preflight import check_before_training, check_overrides
from trainers.qa_corpus import generate_qa
from trainers.tokenization import document_separator, train_tokenizer

logger = logging.getLogger(__name__)

# The demonstration's two decoders: different architectures, widths, depths and tokenizers.
DEMO_DECODERS = {
    "llama": (LlamaForCausalLM, LlamaConfig, dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=688), 1000),
    "qwen": (Qwen2ForCausalLM, Qwen2Config, dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=6,
                                                 num_key_value_heads=2, intermediate_size=512), 1500),
}
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


def demo_rows(tokenizer, records, anchor_text: str) -> Dataset:
    """Rows a demo decoder is trained on: text ⊕ anchor ⊕ answer ⊕ EOS, tokenized piece by piece exactly as the
    evaluation and the wire assemble them."""
    anchor = tokenizer(anchor_text, add_special_tokens=False).input_ids
    prompts = wire_conditions.text_prompts(tokenizer, [wire_conditions.qa_text(r) for r in records], anchor)
    rows = [prompt + tokenizer(r["answers"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            for prompt, r in zip(prompts, records)]
    return Dataset.from_dict({"input_ids": rows})


def train_demo_decoder(name: str, args: WireArguments, training_args, records, folder: Path):
    model_class, config_class, sizes, vocab = DEMO_DECODERS[name]
    texts = [wire_conditions.qa_text(r) + args.anchor_text + r["answers"][0] for r in records]
    tokenizer = train_tokenizer(texts, vocab, kind="byte_level_bpe")
    document_separator(tokenizer)
    rows = demo_rows(tokenizer, records, args.anchor_text)
    longest = max(map(len, rows["input_ids"]))
    config = config_class(**{**sizes, **args.demo_decoder_overrides.get(name, {})}, vocab_size=len(tokenizer),
                          max_position_embeddings=max(256, longest), pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = model_class(config)
    decoder_args = MuonTrainingArguments(
        output_dir=str(folder / "trainer"), max_steps=args.demo_decoder_steps, learning_rate=args.demo_decoder_learning_rate,
        per_device_train_batch_size=args.demo_decoder_batch_size, lr_scheduler_type="cosine",
        warmup_steps=min(100, args.demo_decoder_steps // 10), weight_decay=0.1, bf16=training_args.bf16,
        use_cpu=training_args.use_cpu, report_to="none", save_strategy="no", logging_steps=max(1, args.demo_decoder_steps // 10),
        seed=training_args.seed, dataloader_num_workers=0, disable_tqdm=True, export_checkpoints=False)
    trainer = CausalLMTrainer(model=model, args=decoder_args, train_dataset=rows,
                              data_collator=CausalLMCollator(tokenizer.pad_token_id, len(tokenizer)))
    trainer.train()
    trainer.accelerator.free_memory()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    logger.info("demo decoder %s: %s parameters, final loss %.3f", name, f"{model.num_parameters():,}",
                trainer.state.log_history[-1].get("train_loss", float("nan")))
    return str(folder)


def obtain_decoders(args: WireArguments, training_args, train_records) -> dict:
    """{name: path} of every decoder: the given ones, or the demo decoders trained and saved under output_dir."""
    if args.decoders:
        pairs = [entry.split("=", 1) for entry in args.decoders]
        if any(len(pair) != 2 or not pair[1] for pair in pairs):
            raise ValueError(f"--decoders takes name=path entries, got {args.decoders}")
        # A local folder is recorded absolute in the exported config, so load_decoders works from anywhere.
        return {name: str(Path(path).resolve()) if Path(path).exists() else path for name, path in pairs}
    output = Path(training_args.output_dir).resolve() / "decoders"
    paths = {}
    for name in DEMO_DECODERS:
        folder = output / name
        with training_args.main_process_first(desc=f"train the demo decoder {name}"):
            if training_args.process_index == 0 and not (folder / "config.json").exists():
                train_demo_decoder(name, args, training_args, train_records, folder)
        paths[name] = str(folder)
    return paths


def build_wire(args: WireArguments, paths: dict, device, dtype) -> LatentWireModel:
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


def main(args: WireArguments, training_args: LatentWireTrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_overrides_of(args)
    set_seed(training_args.seed)
    train_records, eval_records = load_records(args)
    paths = obtain_decoders(args, training_args, train_records)
    dtype = torch.bfloat16 if args.decoder_dtype == "bfloat16" else torch.float32
    wire = build_wire(args, paths, training_args.device, dtype)
    rows = [{"text": wire_conditions.qa_text(r), "answer": r["answers"][0]} for r in train_records]
    held_out = [{"text": wire_conditions.qa_text(r), "answer": r["answers"][0]} for r in eval_records]
    tokenizer = byte_tokenizer(args.max_bytes)
    anchors = {name: wire.config.decoder(name)["anchor_ids"] for name in wire.decoders}
    collator = LatentWireCollator(tokenizer, wire.decoder_tokenizers, args.max_bytes,
                                  anchor_ids=anchors if training_args.distillation_weight else None)
    card = CardInfo(description=f"A LatentWire ({wire.num_parameters():,} parameters) for the decoders "
                                f"{', '.join(f'{n} ({p})' for n, p in paths.items())}, trained by hubzoo.",
                    training_data=f"{len(rows):,} questions ({args.train_file or 'generated QA corpus'})")
    check_before_training(training_args.output_dir, model=wire, tokenizer=tokenizer, card=card)
    trainer = LatentWireTrainer(model=wire, args=training_args, train_dataset=Dataset.from_list(rows),
                                eval_dataset=Dataset.from_list(held_out), data_collator=collator)
    if training_args.max_train_minutes:
        trainer.add_callback(TimeBudgetCallback(training_args.max_train_minutes))
    logger.info("wire: %s trainable parameters; decoders %s", f"{wire.num_parameters():,}",
                {name: f"{d.num_parameters():,}" for name, d in wire.decoders.items()})
    trainer.train()

    def evaluate_and_export():
        wire.eval()
        result = wire_conditions.evaluate_conditions(
            wire, eval_records, tokenizer, batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens)
        lines = verdict(result, args)
        result.update(verdict=lines, train_steps=trainer.state.global_step, decoders_paths=paths,
                      wire_parameters=wire.num_parameters())
        output = wire_conditions.write_results(result, training_args.output_dir)
        report = wire_conditions.markdown_report(result) + "\n" + "\n".join(f"* {line}" for line in lines) + "\n"
        (output / "results.md").write_text(report)
        card.training_procedure = f"{trainer.state.global_step} steps, lr {training_args.learning_rate}."
        folder = export(wire, tokenizer, output / "export", card=card)
        print("\n".join(lines))
        print(f"Exported and verified: {folder}")

    finish_on_main_process(trainer, evaluate_and_export)


def parse(argv=None):
    return parse_args((WireArguments, LatentWireTrainingArguments), argv)


if __name__ == "__main__":
    main(*parse())
