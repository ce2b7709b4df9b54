"""What compiled training needs from every hubzoo trainer: one shape per training step, CUDA-graph steps marked,
and a watch that reports the compile time and any recompile after warm-up.

A compiled step is fast only while it keeps seeing the shapes and Python values it was compiled for. The trainers'
training batches are fixed-size (packed or padded rows of `max_seq_length`); what is left is the last partial batch
of an epoch, which `dataloader_drop_last` drops. Trainer would drop the last evaluation batch with it too, losing
evaluation examples: `CompiledTrainingMixin` keeps every evaluation example whatever that flag says (evaluation
compiles its own graphs once, during the first evaluation, which is part of warm-up).

Under `torch_compile_mode: reduce-overhead` (or `max-autotune`), inductor replays forward and backward as CUDA
graphs, whose outputs live in memory the next replay overwrites; each training and evaluation step is marked as a new
step (`torch.compiler.cudagraph_mark_step_begin`) so that the graphs of one step may reuse the memory of the last.
"""

import logging
import time
from contextlib import contextmanager
from typing import Optional

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def uses_cuda_graphs(args) -> bool:
    return bool(args.torch_compile) and args.torch_compile_mode in CUDA_GRAPH_MODES


def fixed_batch_width(training_args, max_seq_length: int, packed: bool = False) -> Optional[int]:
    """The width every batch is padded to under `torch_compile` when rows are not packed (packed rows all have
    `max_seq_length` tokens already); None: pad each batch to its longest row, as eager training does."""
    return max_seq_length if training_args.torch_compile and not packed else None


class CompiledTrainingMixin:
    """For every hubzoo `Trainer` subclass (see the module docstring)."""

    def get_eval_dataloader(self, eval_dataset=None):
        with _keep_last_batch(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with _keep_last_batch(self.args):
            return super().get_test_dataloader(test_dataset)

    def training_step(self, *args, **kwargs):
        if uses_cuda_graphs(self.args):
            torch.compiler.cudagraph_mark_step_begin()
        return super().training_step(*args, **kwargs)

    def prediction_step(self, *args, **kwargs):
        if uses_cuda_graphs(self.args):
            torch.compiler.cudagraph_mark_step_begin()
        return super().prediction_step(*args, **kwargs)


@contextmanager
def _keep_last_batch(args):
    """`args.dataloader_drop_last` off while an evaluation dataloader is built."""
    saved, args.dataloader_drop_last = args.dataloader_drop_last, False
    try:
        yield
    finally:
        args.dataloader_drop_last = saved


class CompileWatchCallback(TrainerCallback):
    """Under `torch_compile`: logs how long the first optimizer step took (compilation included) and warns, with
    dynamo's guard-failure reasons, whenever a graph is compiled after warm-up.

    Warm-up is the first optimizer step and the first evaluation (evaluation runs the model in another mode, so it
    may compile its own graphs once). Any graph compiled later (a batch of another shape at an epoch's end, a
    changed Python value the graph specialised on) is a recompile that stalls the run for as long as compilation
    takes; `late_graphs` lists them as (step, new graphs, reasons)."""

    def __init__(self):
        self.late_graphs = []
        self.compile_seconds = self.warm_up_graphs = None
        self._graphs, self._failures = 0, {}
        self._evaluated = False
        self._start = None

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return counters["stats"]["unique_graphs"]

    @staticmethod
    def failures() -> dict:
        """Dynamo's guard failures so far: {compiled code: [reason, ...]}, a list per code that only grows."""
        from torch._dynamo.utils import guard_failures

        return {code: list(reasons) for code, reasons in guard_failures.items()}

    def _snapshot(self):
        self._graphs, self._failures = self.graphs(), self.failures()

    def _new_reasons(self) -> list:
        return [reason for code, reasons in self.failures().items()
                for reason in reasons[len(self._failures.get(code, ())):]]

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()
        self._snapshot()

    def on_step_end(self, args, state, control, **kwargs):
        if self.compile_seconds is None:
            self.compile_seconds = time.monotonic() - self._start
            self.warm_up_graphs = self.graphs() - self._graphs
            logger.info("torch.compile: the first optimizer step took %.1f s (compilation included; %d graphs)",
                        self.compile_seconds, self.warm_up_graphs)
            self._snapshot()
        else:
            self._check(state.global_step, "training")

    def on_evaluate(self, args, state, control, **kwargs):
        if self._evaluated:
            self._check(state.global_step, "evaluation")
        self._evaluated = True
        self._snapshot()

    def _check(self, step, where):
        graphs = self.graphs()
        if graphs > self._graphs:
            reasons = self._new_reasons()
            self.late_graphs.append((step, graphs - self._graphs, reasons))
            logger.warning("torch.compile compiled %d new graph(s) during %s at step %d, after warm-up: a recompile "
                           "stalls training. Guard failures: %s", graphs - self._graphs, where, step,
                           "; ".join(reasons) or "none recorded (a new frame)")
            self._snapshot()
