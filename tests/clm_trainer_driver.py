"""One step of `CausalLMTrainer` (SGD, or Muon + AdamW) on 4 fixed rows of unequal length; saves the parameters.
Used by tests/test_clm_trainer.py, which also imports its helpers.

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no --main_process_port PORT tests/clm_trainer_driver.py OUT.safetensors \
        --optimizer muon --batch-size 2 --world-size 2 [--lora]

With --lora the model is a LoRA adapter of the tiny GPT (trainers/adapters.py), its B matrices started away from zero
so that every adapter weight has a gradient in the first step.
"""

import argparse
import os
import sys

import torch
from datasets import Dataset
from safetensors.torch import save_file

from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from trainers.adapters import with_peft
from trainers.clm_config import CausalLMTrainingArguments
from trainers.callbacks import close_process_group
from trainers.clm_trainer import CausalLMTrainer
from trainers.collators import CausalLMCollator

VOCAB, EOT, PAD_ID = 60, 59, 0
REAL_PER_ROW = (12, 5, 9, 3)  # unequal padding: a per-micro-batch mean would weight rows differently


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return ModdedGptForCausalLM(ModdedGptConfig(
        vocab_size=64, tokenizer_vocab_size=VOCAB, eot_token_id=EOT, pad_token_id=PAD_ID, hidden_size=32,
        num_hidden_layers=3, num_attention_heads=2, head_dim=16, intermediate_size=48, max_position_embeddings=16,
        zero_init_projections=False))


def rows_dataset() -> Dataset:
    generator = torch.Generator().manual_seed(99)
    rows = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in REAL_PER_ROW]
    rows[0][6] = EOT  # a document boundary inside a row
    return Dataset.from_dict({"input_ids": rows})


def training_args(output_dir, optimizer="sgd", **overrides) -> CausalLMTrainingArguments:
    # SGD at lr 1 without clipping: the update is exactly -gradient, so a wrongly scaled gradient shows. Muon: the
    # orthogonalised update of the same gradient, and AdamW on the rest.
    values = dict(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4, learning_rate=1.0,
                  optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, use_cpu=True,
                  report_to="none", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, logging_steps=1,
                  seed=0, ddp_find_unused_parameters=False)
    if optimizer == "muon":
        values.update(optimizer="muon", learning_rate=1e-2, muon_learning_rate=0.05)
    return CausalLMTrainingArguments(**{**values, **overrides})


LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


def lora_model(seed: int = 0):
    """The tiny GPT with a LoRA adapter on every linear layer but the head; B drawn (seeded) instead of zero."""
    model = with_peft(tiny_model(seed), LORA, base="tiny-gpt")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def make_trainer(output_dir, optimizer="sgd", callbacks=(), lora=False, **overrides):
    return CausalLMTrainer(model=lora_model() if lora else tiny_model(),
                           args=training_args(output_dir, optimizer, **overrides),
                           train_dataset=rows_dataset(), eval_dataset=rows_dataset(),
                           data_collator=CausalLMCollator(PAD_ID, VOCAB), callbacks=list(callbacks))


def one_step(output_dir, optimizer: str, batch_size: int, ga: int = 1, lora: bool = False):
    """(trainer, {name: parameter after one optimizer step})."""
    trainer = make_trainer(output_dir, optimizer, lora=lora, per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=ga)
    trainer.train()
    return trainer, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--optimizer", required=True, choices=["sgd", "muon"])
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args(argv)
    trainer, params = one_step(args.out + ".trainer", args.optimizer, args.batch_size, lora=args.lora)
    report = f"rank={trainer.args.process_index} world_size={trainer.args.world_size}\n"
    os.write(sys.stdout.fileno(), report.encode())  # one write per line: the ranks share stdout
    assert trainer.args.world_size == args.world_size
    if trainer.is_world_process_zero():
        save_file(params, args.out)
    close_process_group(trainer, exit_code=0)  # waits for every rank; why it exits: see there


if __name__ == "__main__":
    sys.exit(main())
