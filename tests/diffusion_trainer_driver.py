"""One SGD step of `MaskedDiffusionTrainer` on 4 fixed rows, with noise that depends on each row only (so the step
is comparable whatever the split into micro-batches or ranks); saves the parameters. Used by
tests/test_diffusion_trainer.py, which also imports its helpers.

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port PORT tests/diffusion_trainer_driver.py OUT.safetensors \
        --algorithm mdlm --batch-size 2 --world-size 2
"""

import argparse
import hashlib
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import TrainingArguments

from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from trainers.callbacks import close_process_group
from trainers.collators import DiffusionCollator
from trainers.diffusion_trainer import MaskedDiffusionTrainer

SEQ_LEN, VOCAB, MASK_ID, PAD_ID = 12, 40, 39, 0
REAL_PER_ROW = (12, 5, 9, 3)  # unequal padding: a per-micro-batch mean would weight rows differently


def tiny_model(algorithm: str, seed: int = 0):
    torch.manual_seed(seed)
    sizes = dict(vocab_size=VOCAB, mask_token_id=MASK_ID, pad_token_id=PAD_ID, bos_token_id=1, hidden_size=32,
                 num_hidden_layers=2,
                 num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16,
                 dropout=0.0, zero_init_modulation=False)
    if algorithm == "bd3lm":
        return Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**sizes, block_size=4))
    return MdlmForMaskedDiffusionLM(MdlmConfig(**sizes))


def rows_dataset() -> Dataset:
    generator = torch.Generator().manual_seed(99)
    return Dataset.from_dict({"input_ids": [torch.randint(1, MASK_ID, (n,), generator=generator).tolist()
                                            for n in REAL_PER_ROW]})


class RowSeededTrainer(MaskedDiffusionTrainer):
    """Noise drawn row by row from a generator seeded by the row's real ids (padding stripped): independent of how
    rows are batched or padded."""

    def draw_noise(self, model, clean, generator, training, keep=None):
        noisy, times = clean.clone(), torch.ones(clean.shape, device=clean.device)
        for index, row in enumerate(clean):
            real = row[row != PAD_ID]
            digest = hashlib.blake2b(real.cpu().numpy().tobytes(), digest_size=8).digest()
            row_generator = torch.Generator(device=clean.device).manual_seed(int.from_bytes(digest, "little") >> 1)
            row_keep = None if keep is None else keep[index, None, :len(real)]
            row_noisy, row_times = super().draw_noise(model, real[None], row_generator, training, row_keep)
            noisy[index, :len(real)] = row_noisy[0]
            times[index, :len(real)] = row_times[0] if row_times.dim() == 2 else row_times[0]
        return noisy, (times if model.config.model_type == "bd3lm" else times[:, 0])


def one_step_args(output_dir, batch_size: int, ga: int = 1) -> TrainingArguments:
    # SGD, constant LR, no clipping: the update is exactly -lr * gradient, so a wrongly scaled gradient shows.
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=ga, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0, use_cpu=True, report_to="none", save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, logging_steps=1, seed=0, ddp_find_unused_parameters=False)


def one_step(output_dir, algorithm: str, batch_size: int, ga: int = 1, dataset=None):
    """(trainer, {name: parameter after one optimizer step}) on `dataset` (default: `rows_dataset()`)."""
    trainer = RowSeededTrainer(model=tiny_model(algorithm), args=one_step_args(output_dir, batch_size, ga),
                               train_dataset=rows_dataset() if dataset is None else dataset, ema_decay=0,
                               data_collator=DiffusionCollator(PAD_ID, MASK_ID, VOCAB))
    trainer.train()
    return trainer, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--algorithm", required=True, choices=["mdlm", "bd3lm"])
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args(argv)
    trainer, params = one_step(args.out + ".trainer", args.algorithm, args.batch_size)
    report = f"rank={trainer.args.process_index} world_size={trainer.args.world_size}\n"
    os.write(sys.stdout.fileno(), report.encode())  # one write per line: the ranks share stdout
    assert trainer.args.world_size == args.world_size
    if trainer.is_world_process_zero():
        save_file(params, args.out)
    close_process_group(trainer, exit_code=0)  # waits for every rank; why it exits: see there


if __name__ == "__main__":
    sys.exit(main())
