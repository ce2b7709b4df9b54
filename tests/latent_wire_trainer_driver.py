"""Tiny LatentWire fixtures (two real decoders, a Llama and a Qwen2 with their own byte-level BPEs) and one training
step of `LatentWireTrainer`, saving the wire's parameters (used by tests/models/latent_wire/, which import its
helpers).

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port PORT tests/latent_wire_trainer_driver.py OUT.safetensors \
        --batch-size 2 --world-size 2

Imports only installed packages (`accelerate launch` puts this file's folder, not the repository root, on sys.path).
"""

import argparse
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from modeling.latent_wire import LatentWireConfig, LatentWireModel, byte_tokenizer
from trainers.callbacks import close_process_group
from trainers.latent_wire_config import LatentWireTrainingArguments
from trainers.latent_wire_trainer import LatentWireCollator, LatentWireTrainer
from trainers.tokenization import document_separator, train_tokenizer

CORPUS = [f"Context: {name} keeps {count} {thing}. Question: What does {name} keep? Answer: {count} {thing}"
          for name in ("Ana", "Bo", "Cy", "Di") for count in ("two", "nine", "six") for thing in ("owls", "keys")]
ROWS = [{"text": f"Context: {name} keeps {thing}. Question: What?", "answer": thing}
        for name, thing in [("Ana", "owls"), ("Bo", "red keys"), ("Cy", "six"), ("Di", "nine blue owls")]]


def decoder_tokenizer(vocab_size):
    tokenizer = train_tokenizer(CORPUS, vocab_size, kind="byte_level_bpe", min_frequency=1)
    document_separator(tokenizer)  # [SEP] becomes the EOS
    return tokenizer


def tiny_decoders(seed=0):
    """{name: (decoder, tokenizer)}: two architectures, widths 24 and 40, different vocabularies."""
    torch.manual_seed(seed)
    llama_tokenizer, qwen_tokenizer = decoder_tokenizer(300), decoder_tokenizer(360)
    common = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(llama_tokenizer), hidden_size=24, intermediate_size=48,
                                         pad_token_id=llama_tokenizer.pad_token_id, **common))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(qwen_tokenizer), hidden_size=40, intermediate_size=64,
                                        pad_token_id=qwen_tokenizer.pad_token_id, **common))
    return {"llama": (llama.eval(), llama_tokenizer), "qwen": (qwen.eval(), qwen_tokenizer)}


def wire_config(**overrides):
    entries = [{"name": "llama", "hidden_size": 24}, {"name": "qwen", "hidden_size": 40, "bos_after_prefix": False}]
    return LatentWireConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                      num_latents=4, max_position_embeddings=96, decoders=entries), **overrides})


def attached_wire(decoders=None, seed=0):
    torch.manual_seed(seed)
    wire = LatentWireModel(wire_config()).eval()
    for name, (decoder, tokenizer) in (decoders or tiny_decoders()).items():
        wire.attach_decoder(name, decoder, tokenizer)
    return wire


def make_trainer(output_dir, batch_size, accumulation, steps=1, optimizer="sgd"):
    """SGD at a constant rate without clipping (the update is -lr × gradient: a wrong normaliser shows), or another
    optimizer; the 4 ROWS, whose answers differ in length."""
    decoders = tiny_decoders()
    wire = attached_wire(decoders)
    args = LatentWireTrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim=optimizer, lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0, use_cpu=True, report_to="none", save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, seed=0, ddp_find_unused_parameters=False)
    return LatentWireTrainer(model=wire, args=args, train_dataset=Dataset.from_list(ROWS),
                             data_collator=LatentWireCollator(byte_tokenizer(96), wire.decoder_tokenizers, 96)), decoders


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args(argv)
    trainer, _ = make_trainer(args.out + ".trainer", args.batch_size, accumulation=1)
    trainer.train()
    report = f"rank={trainer.args.process_index} world_size={trainer.args.world_size}\n"
    os.write(sys.stdout.fileno(), report.encode())  # one write per line: the ranks share stdout
    assert trainer.args.world_size == args.world_size
    if trainer.is_world_process_zero():
        save_file({k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()},
                  args.out)
    close_process_group(trainer, exit_code=0)


if __name__ == "__main__":
    sys.exit(main())
