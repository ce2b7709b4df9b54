"""The frozen decoders a LatentWire run serves (`trainers/run_latent_wire.py`): the given ones, or the demonstration's
two small causal LMs (a Llama and a Qwen2 of other widths, depths and byte-level BPEs), trained here on the same
questions as text before the wire is trained, then saved under `output_dir/decoders/<name>`."""

import logging
from pathlib import Path

from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eval_suites import wire_conditions
from trainers.arguments import MuonTrainingArguments
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator
from trainers.tokenization import document_separator, train_tokenizer

logger = logging.getLogger(__name__)

# The demonstration's two decoders: different architectures, widths, depths and tokenizers.
DEMO_DECODERS = {
    "llama": (LlamaForCausalLM, LlamaConfig, dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=688), 1000),
    "qwen": (Qwen2ForCausalLM, Qwen2Config, dict(hidden_size=192, num_hidden_layers=3, num_attention_heads=6,
                                                 num_key_value_heads=2, intermediate_size=512), 1500),
}


def demo_rows(tokenizer, records, anchor_text: str) -> Dataset:
    """Rows a demo decoder is trained on: text ⊕ anchor ⊕ answer ⊕ EOS, tokenized piece by piece exactly as the
    evaluation and the wire assemble them."""
    anchor = tokenizer(anchor_text, add_special_tokens=False).input_ids
    prompts = wire_conditions.text_prompts(tokenizer, [wire_conditions.qa_text(r) for r in records], anchor)
    rows = [prompt + tokenizer(r["answers"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            for prompt, r in zip(prompts, records)]
    return Dataset.from_dict({"input_ids": rows})


def train_demo_decoder(name: str, args, training_args, records, folder: Path):
    """Demo decoder `name` trained on `records` (`args`: the run's WireArguments) and saved in `folder`."""
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


def obtain_decoders(args, training_args, train_records) -> dict:
    """{name: path} of every decoder: the given ones (`args.decoders`), or the demo decoders trained and saved under
    output_dir."""
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
