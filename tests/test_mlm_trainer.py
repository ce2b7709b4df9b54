"""MaskedLMTrainer: the loss of an optimizer step is (sum of token losses) / (labelled tokens of the whole step), so one
step gives the same parameters however it is split into micro-batches (gradient accumulation) or processes (DDP), and
a resumed run reproduces the uninterrupted one."""

import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from tests.mlm_trainer_driver import LEARNING_RATE, one_step, one_step_args, premasked_dataset, tiny_model
from tests.modeling_common import tiny_tokenizer
from trainers.collators import MaskedLMCollator, MaskingEpochCallback
from trainers.mlm_trainer import MaskedLMTrainer

DRIVER = Path(__file__).with_name("mlm_trainer_driver.py")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Why: the tensors are tiny; with 2 intra-op threads on a busy 2-core machine these tests took 60 s instead of
    8 s (thread contention). Restored afterwards: the thread count is process-global."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def reference_step() -> dict:
    """Plain SGD on the exact objective: sum of CE over all labelled tokens of the 4 rows / their number."""
    model = tiny_model()
    batch = {k: torch.tensor(v) for k, v in premasked_dataset()[:].items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum")
    (loss / batch["labels"].ne(-100).sum()).backward()
    return {n: (p - LEARNING_RATE * p.grad).detach() for n, p in model.named_parameters()}


def test_ga_equivalence(tmp_path):
    trainer, full = one_step(tmp_path / "ga1", batch_size=4, ga=1)
    assert trainer.seen_counts == [15]
    trainer, accumulated = one_step(tmp_path / "ga2", batch_size=2, ga=2)
    assert trainer.seen_counts == [15, 15]  # the whole window's count, not the micro-batch's
    initial = {n: p.detach() for n, p in tiny_model().named_parameters()}
    assert max_diff(full, initial) > 1e-3  # the step moved the parameters
    print(f"ours: |GA1 - reference| = {max_diff(full, reference_step()):.2e}, "
          f"|GA1 - GA2| = {max_diff(full, accumulated):.2e}")
    assert max_diff(full, reference_step()) < 1e-5
    assert max_diff(full, accumulated) < 1e-5

    # The same check fails for a plain Trainer, whose loss is the model's per-micro-batch mean divided by GA.
    _, naive_full = one_step(tmp_path / "naive1", batch_size=4, ga=1, trainer_class=Trainer)
    _, naive_accumulated = one_step(tmp_path / "naive2", batch_size=2, ga=2, trainer_class=Trainer)
    print(f"naive: |GA1 - ours| = {max_diff(naive_full, full):.2e}, "
          f"|GA1 - GA2| = {max_diff(naive_full, naive_accumulated):.2e}")
    assert max_diff(naive_full, full) < 1e-5  # one micro-batch: per-batch mean == exact objective
    assert max_diff(naive_full, naive_accumulated) > 1e-3


def test_eval_loss_is_the_plain_mean_and_an_unlabelled_batch_gives_zero(tmp_path):
    trainer, _ = one_step(tmp_path, batch_size=4)
    batch = {k: torch.tensor(v) for k, v in premasked_dataset()[:].items()}
    model = trainer.model.eval()
    expected = model(**batch).loss
    # 5.23's prediction_step passes a count too (model_accepts_loss_kwargs is True): it must not change the mean.
    for count in (None, torch.tensor(999)):
        assert torch.allclose(trainer.compute_loss(model, dict(batch), num_items_in_batch=count), expected, atol=1e-6)
    # Through Trainer.evaluate; the labels must still reach compute_metrics (compute_loss must not pop them from
    # the caller's dict).
    trainer.compute_metrics = lambda p: {"labelled": int((p.label_ids != -100).sum())}
    metrics = trainer.evaluate(premasked_dataset())
    assert abs(metrics["eval_loss"] - expected.item()) < 1e-5 and metrics["eval_labelled"] == 15

    model.train()
    unlabelled = dict(batch, labels=torch.full_like(batch["labels"], -100))
    for count in (None, torch.tensor(0), torch.tensor(7)):
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(unlabelled), num_items_in_batch=count)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert all(torch.isfinite(p.grad).all() and not p.grad.any() for p in model.parameters() if p.grad is not None)


def test_device_checks_are_off_only_while_training_behind_a_checking_collator(tmp_path):
    tokenizer = tiny_tokenizer(64)

    def flags(model):
        return [m.check_values_on_device for m in model.modules() if hasattr(m, "check_values_on_device")]

    def train(collator, data):
        during = []

        class Record(TrainerCallback):
            def on_step_begin(self, args, state, control, model=None, **kwargs):
                during.append(flags(model))

        model = tiny_model()
        MaskedLMTrainer(model=model, args=one_step_args(tmp_path, batch_size=2), train_dataset=data,
                        data_collator=collator, callbacks=[Record()]).train()
        return during, flags(model)

    # LtgBertForMaskedLM and its LtgBertModel: off during training, restored afterwards.
    assert train(MaskedLMCollator(tokenizer), text_dataset(tokenizer, 4)) == ([[False, False]], [True, True])
    assert train(default_data_collator, premasked_dataset()) == ([[True, True]], [True, True])
    # A tokenizer larger than the model's vocabulary checks nothing the model needs: the model keeps its checks.
    assert train(MaskedLMCollator(tiny_tokenizer(80)), text_dataset(tokenizer, 4)) == ([[True, True]], [True, True])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(script, cwd, *arguments) -> subprocess.CompletedProcess:
    """`accelerate launch` of a driver as two gloo ranks on CPU, one thread each; fails the test on a non-zero exit.
    (--multi_gpu, not --cpu: with --cpu accelerate 1.15 silently starts ONE process, transformers_v5.md §5.)"""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(script), *map(str, arguments)]
    out = subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    # --multi_gpu, not --cpu: with --cpu accelerate 1.15 silently starts ONE process (transformers_v5.md §5). Two
    # gloo ranks on CPU, one thread each; each rank gets 2 of the 4 rows (global batch 4, as the reference below).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               str(DRIVER), str(tmp_path / "two.safetensors"), "--batch-size", "2", "--world-size", "2"]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    ranks = sorted(re.findall(r"rank=\d+ .*?num_items_in_batch=\[[^\]]*\]", out.stdout))
    print(f"\n2 processes: {time.perf_counter() - start:.1f} s", *ranks, sep="\n  ")
    # Both ranks ran, in one DDP group, and each normalized by the count gathered over both (15), not its own.
    assert [line.split()[0] for line in ranks] == ["rank=0", "rank=1"]
    assert all("world_size=2" in line and "MULTI_CPU" in line and "num_items_in_batch=[15]" in line for line in ranks)

    _, one = one_step(tmp_path / "one", batch_size=4)  # one process, same 4 rows in one batch
    diff = max_diff(one, load_file(tmp_path / "two.safetensors"))
    print(f"max |1 process - 2 processes| = {diff:.2e}")
    assert diff < 1e-5


class StopAt(TrainerCallback):
    """Simulates an interruption: stop after `step` (the checkpoint of that step is written first)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def text_dataset(tokenizer, rows: int) -> Dataset:
    rng = random.Random(7)
    texts = [" ".join(f"w{rng.randrange(5, 64)}" for _ in range(rng.randrange(6, 15))) for _ in range(rows)]
    return Dataset.from_dict(dict(tokenizer(texts)))


def resume_args(output_dir) -> TrainingArguments:
    # AdamW + linear decay: the resumed run must also restore optimizer moments and the scheduler position.
    return TrainingArguments(
        output_dir=str(output_dir), max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1,
        per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True, report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, seed=0)


def step_losses(trainer) -> dict:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


@pytest.mark.parametrize("rows, masking", [
    # 20 rows / batch 4 = 5 steps per epoch: the resume at step 3 is mid-epoch (accelerate has already collated
    # batch 4 when checkpoint-3 records the RNG state), and step 6 starts epoch 2, which must be masked afresh.
    pytest.param(20, "collator", id="mid-epoch"),
    # 12 rows: checkpoint-3 ends epoch 1, so the resumed run starts with a new epoch.
    pytest.param(12, "collator", id="epoch-boundary"),
    # Masked once, up front: mid-epoch resume with no masking in the data path (weights, AdamW, scheduler, sampler).
    pytest.param(20, "premasked", id="mid-epoch-premasked"),
])
def test_resume_reproduces_the_loss_curve(tmp_path, rows, masking):
    tokenizer = tiny_tokenizer(64)
    data = text_dataset(tokenizer, rows)
    # The real collator and its epoch callback: span masking with 80/10/10 corruption.
    collator = MaskedLMCollator(tokenizer)
    if masking == "premasked":
        batch = MaskedLMCollator(tokenizer, seed=3)(list(data))
        data, collator = Dataset.from_dict({k: v.tolist() for k, v in batch.items()}), default_data_collator
    epochs = []

    class RecordEpoch(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            epochs.append(getattr(collator, "epoch", None))

    def make(output_dir, extra=()):
        masking_callbacks = [MaskingEpochCallback(collator)] if masking == "collator" else []
        return MaskedLMTrainer(model=tiny_model(), args=resume_args(output_dir), train_dataset=data,
                               data_collator=collator, callbacks=[*masking_callbacks, RecordEpoch(), *extra])

    straight = make(tmp_path / "straight")
    straight.train()
    if masking == "collator":  # the collator was told each epoch before its batches were drawn
        steps_per_epoch = rows // 4
        assert epochs == [step // steps_per_epoch for step in range(6)]
    straight_epochs, epochs[:] = list(epochs), []
    interrupted = make(tmp_path / "resumed", [StopAt(3)])
    interrupted.train()
    assert interrupted.state.global_step == 3 and (tmp_path / "resumed" / "checkpoint-3" / "rng_state.pth").is_file()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))

    assert epochs[-3:] == straight_epochs[3:]
    expected, got = step_losses(straight), step_losses(resumed)
    print("\nuninterrupted:", expected, "\nresumed:      ", got)
    assert sorted(expected) == sorted(got) == list(range(1, 7)) and resumed.state.global_step == 6
    assert max(abs(expected[s] - got[s]) for s in (4, 5, 6)) < 1e-6
    final = lambda t: {n: p.detach() for n, p in t.model.named_parameters()}  # noqa: E731
    assert max_diff(final(straight), final(resumed)) < 1e-6
