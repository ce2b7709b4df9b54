"""Trainer callbacks (a verified Hub export of every checkpoint, a time budget), the loss-curve plot, and the closing of
the process group every rank does at the end of a run."""

import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from hub_exports import CardInfo, export
from trainers.checkpoints import CheckpointExtras

logger = logging.getLogger(__name__)


class ExportCheckpointCallback(CheckpointExtras):
    """Each checkpoint holds a verified Hub-ready export of it, `<checkpoint>/export`.

    Trainer's own checkpoint folder also holds optimizer and RNG state (for resuming), so it is not itself a Hub
    repo; the export beside that state is. It is written before the checkpoint becomes visible (see
    `CompleteCheckpointsMixin`): a failing verification stops training at the step that broke, and that checkpoint
    never appears, so the one before stays the newest complete checkpoint.
    """

    def __init__(self, tokenizer, card: CardInfo, weights=None):
        """`weights`: optional callable returning a context in which the model holds the weights to export (e.g.
        the trainer's EMA); default: the model's own weights."""
        self.tokenizer, self.card, self.weights = tokenizer, card, weights

    def write_checkpoint_extras(self, folder, model, state) -> None:
        with self.weights() if self.weights else nullcontext():
            export(model, self.tokenizer, Path(folder) / "export", card=self.card)
        logger.info("checkpoint %d exported and verified", state.global_step)


def plot_loss_curve(log_history: list, path, ylabel: str = "masked-LM loss (nats per masked token)") -> Path:
    """Training (and evaluation, if logged) loss against optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "training loss"), (evaluation, "evaluation loss")):
        if points:
            axis.plot(*zip(*points), label=label, marker="o" if len(points) < 20 else None)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


class TimeBudgetCallback(TrainerCallback):
    """Stop training (cleanly: the final save, export and evaluation still run) once a wall-clock budget is spent."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            logger.info("time budget of %.1f minutes spent at step %d; stopping", self.seconds / 60, state.global_step)
            control.should_training_stop = True


def close_process_group(trainer, exit_code: int | None = None) -> None:
    """Every rank waits for the others, then the process group is destroyed.

    With `exit_code` given, a gloo rank (multi-process CPU runs) then leaves at once through `os._exit`, after
    flushing its logs and streams: tearing a gloo group down from Python can deadlock or abort (its run-loop thread
    needs the GIL that the destroying thread holds), and by then everything the rank had to write is written."""
    gloo = dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    if gloo and exit_code is not None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
