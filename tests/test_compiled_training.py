"""Compiled training sees one shape per step: the run scripts under `torch_compile` train across epoch boundaries and
evaluate several times without compiling a graph after warm-up (the first optimizer step and the first evaluation),
counted by dynamo itself (`torch._dynamo.utils.counters`), and the watch that reports recompiles does report one.

Dynamo's guards, which decide when a graph is recompiled, do not depend on the backend that compiles the graph; the
"eager" backend keeps these CPU runs short."""

from pathlib import Path

import pytest
import torch

from trainers import finishing, run_ltg_bert, run_mdlm, run_modded_gpt
from trainers.compiled import CompileWatchCallback

CONFIGS = Path(run_mdlm.__file__).with_name("configs")
COMPILED = ["--torch_compile", "true", "--torch_compile_backend", "eager", "--dataloader_drop_last", "true",
            "--eval_strategy", "steps", "--eval_steps", "7", "--logging_steps", "5", "--save_strategy", "no",
            "--embedded_sentences", "1200"]
RUNS = {  # script, config, flags: steps enough to pass at least one epoch boundary and evaluate at least twice
    "ltg_bert": (run_ltg_bert, "ltg_bert_tiny.yaml", ["--max_steps", "24"]),
    # unpacked rows: every batch padded to max_seq_length (fixed_batch_width)
    "mdlm_unpacked": (run_mdlm, "mdlm_tiny.yaml", ["--max_steps", "24", "--packing", "false"]),
    "modded_gpt": (run_modded_gpt, "modded_gpt_tiny.yaml", ["--max_steps", "24"]),
}


@pytest.fixture
def watches(monkeypatch):
    """The CompileWatchCallback of each run, and no export or end-of-run evaluation (not what is tested here)."""
    made = []

    class Recorded(CompileWatchCallback):
        def __init__(self):
            super().__init__()
            made.append(self)

        def on_train_end(self, args, state, control, **kwargs):
            self.state = state

    monkeypatch.setattr(finishing, "CompileWatchCallback", Recorded)
    for script in (run_ltg_bert, run_mdlm, run_modded_gpt):
        monkeypatch.setattr(script, "finish_run", lambda *args, **kwargs: None)
    torch._dynamo.reset()
    return made


@pytest.mark.parametrize("name", sorted(RUNS))
def test_no_graph_is_compiled_after_warm_up(name, tmp_path, watches):
    script, config, flags = RUNS[name]
    argv = [str(CONFIGS / config), "--output_dir", str(tmp_path), *COMPILED, *flags]
    args = script.parse(argv)
    script.main(*args)
    (watch,) = watches
    evaluations = [entry for entry in watch.state.log_history if "eval_loss" in entry]
    assert watch.state.epoch > 1.5 and len(evaluations) >= 3, "the run must cross an epoch and evaluate again"
    assert watch.compile_seconds is not None and watch.warm_up_graphs >= 1, "the step must have been compiled"
    assert watch.late_graphs == []


def test_the_watch_reports_a_recompile_with_its_reason():
    torch._dynamo.reset()
    watch = CompileWatchCallback()
    step = torch.compile(torch.nn.Linear(4, 2), backend="eager")
    watch.on_train_begin(None, None, None)
    step(torch.randn(8, 4))
    watch.on_step_end(None, _State(1), None)
    step(torch.randn(8, 4))
    watch.on_step_end(None, _State(2), None)
    assert watch.warm_up_graphs == 1 and watch.late_graphs == []
    step(torch.randn(3, 4))  # the last, partial batch of an epoch
    watch.on_step_end(None, _State(3), None)
    ((at_step, graphs, reasons),) = watch.late_graphs
    assert at_step == 3 and graphs == 1 and "size mismatch at index 0. expected 8, actual 3" in reasons[0]


class _State:
    def __init__(self, global_step):
        self.global_step = global_step
