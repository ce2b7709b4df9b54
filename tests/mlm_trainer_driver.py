"""One SGD step of `MaskedLMTrainer` on a fixed pre-masked dataset; saves the parameters (used by
tests/test_mlm_trainer.py, which also imports its helpers).

    python tests/mlm_trainer_driver.py OUT.safetensors --batch-size 4 --world-size 1
    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port PORT tests/mlm_trainer_driver.py OUT.safetensors --batch-size 2 \
        --world-size 2

The dataset has 4 rows, so with a global batch of 4 the one step sees every row once whatever the sampler order or
the split over ranks / micro-batches: the runs are comparable. Imports only installed packages (`accelerate launch`
puts this file's folder, not the repository root, on `sys.path`).
"""

import argparse
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import TrainingArguments, default_data_collator

from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from trainers.callbacks import close_process_group
from trainers.mlm_trainer import MaskedLMTrainer

SEQ_LEN = 12
# Different per row: any split into two micro-batches or ranks is unbalanced (3 vs 12, 4 vs 11, 5 vs 10 labels).
LABELLED_PER_ROW = (1, 2, 3, 9)
PADDING_PER_ROW = (4, 0, 2, 0)
LEARNING_RATE = 1.0


def tiny_model(seed: int = 0) -> LtgBertForMaskedLM:
    torch.manual_seed(seed)
    config = LtgBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=32, position_bucket_size=8, pad_token_id=0,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return LtgBertForMaskedLM(config)


def premasked_dataset() -> Dataset:
    """Rows of [PAD]=0-padded random words (ids 5..63); labelled positions hold [MASK]=4 in the input and the original
    id in `labels`; everything else (padding included) is -100."""
    g = torch.Generator().manual_seed(1234)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for n_labelled, n_pad in zip(LABELLED_PER_ROW, PADDING_PER_ROW):
        n_real = SEQ_LEN - n_pad
        ids = torch.randint(5, 64, (n_real,), generator=g)
        chosen = torch.randperm(n_real, generator=g)[:n_labelled]
        labels = torch.full((n_real,), -100)
        labels[chosen] = ids[chosen]
        ids[chosen] = 4
        rows["input_ids"].append(ids.tolist() + [0] * n_pad)
        rows["attention_mask"].append([1] * n_real + [0] * n_pad)
        rows["labels"].append(labels.tolist() + [-100] * n_pad)
    return Dataset.from_dict(rows)


def one_step_args(output_dir, batch_size: int, ga: int = 1) -> TrainingArguments:
    # SGD, constant LR, no clipping: the update is exactly -lr * gradient, so a gradient scaled wrongly shows up
    # (Adam's first step is scale-invariant; clipping at the default max_grad_norm=1.0 would rescale it).
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=ga, learning_rate=LEARNING_RATE, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0.0, weight_decay=0.0, use_cpu=True, report_to="none", save_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, logging_steps=1, seed=0, ddp_find_unused_parameters=False)


class CountingTrainer(MaskedLMTrainer):
    """Records the `num_items_in_batch` Trainer hands to `compute_loss` (evidence that the count is global)."""

    seen_counts: list

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen_counts = getattr(self, "seen_counts", []) + [None if num_items_in_batch is None
                                                                 else int(num_items_in_batch)]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def one_step(output_dir, batch_size: int, ga: int = 1, trainer_class=CountingTrainer):
    """(trainer, {name: parameter after one optimizer step})."""
    trainer = trainer_class(model=tiny_model(), args=one_step_args(output_dir, batch_size, ga),
                            train_dataset=premasked_dataset(), data_collator=default_data_collator)
    trainer.train()
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return trainer, params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True, help="expected number of processes")
    args = parser.parse_args(argv)
    trainer, params = one_step(args.out + ".trainer", args.batch_size)
    world_size, processes = trainer.args.world_size, trainer.accelerator.num_processes
    report = (f"rank={trainer.args.process_index} world_size={world_size} num_processes={processes} "
              f"distributed_type={trainer.accelerator.distributed_type} num_items_in_batch={trainer.seen_counts}\n")
    # One write per line: both ranks share the launcher's stdout pipe, and print() may split text and newline into
    # two writes, which interleaved the two reports into one line in CI.
    os.write(sys.stdout.fileno(), report.encode())
    assert world_size == processes == args.world_size, (world_size, processes, args.world_size)
    if trainer.is_world_process_zero():
        save_file(params, args.out)
    close_process_group(trainer, exit_code=0)  # waits for every rank; why it exits: see there


if __name__ == "__main__":
    sys.exit(main())
