"""The two ends every run script shares: the callbacks that guard a run while it trains (a verified export in each
checkpoint, a wall-clock budget), and `finish_run`, which turns the trained model into the run's outputs.

`finish_run` does, on the main process only and in this order: the loss curve, the verified Hub export (`export/`),
the architecture's own evaluations (a callable the script passes, usually scoring the export as a user loads it),
their results on the model card, `results.json` and any report files, and the printed summary. Then every rank
closes the process group. A script therefore reads: parse → build → train → `finish_run`.
"""

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from hub_exports import CardInfo, Metric, add_results_to_card, export
from trainers.callbacks import ExportCheckpointCallback, TimeBudgetCallback, close_process_group, plot_loss_curve
from trainers.compiled import CompileWatchCallback


@dataclass
class RunReport:
    """What an architecture's end-of-run evaluation returns to `finish_run`."""

    results: dict  # written to results.json
    lines: List[str] = field(default_factory=list)  # printed, one per line
    card_metrics: List[Metric] = field(default_factory=list)  # added to the card's model-index
    card_section: str = ""  # markdown added to the card's results
    files: dict = field(default_factory=dict)  # {file name in output_dir: text}, e.g. samples.txt
    # Writes files in a format of their own (e.g. JSON lines) into output_dir; called with its path.
    write: Optional[Callable[[Path], object]] = None


def run_callbacks(training_args, tokenizer=None, card: Optional[CardInfo] = None, weights=None) -> list:
    """A verified export in every checkpoint (when `export_checkpoints` and a card are given; `weights`: the context
    holding the weights to export, e.g. the EMA), the wall-clock budget (when `max_train_minutes` is set) and the
    recompile watch (under `torch_compile`)."""
    callbacks = []
    if getattr(training_args, "export_checkpoints", False) and card is not None:
        callbacks.append(ExportCheckpointCallback(tokenizer, card, weights=weights))
    if training_args.max_train_minutes:
        callbacks.append(TimeBudgetCallback(training_args.max_train_minutes))
    if training_args.torch_compile:
        callbacks.append(CompileWatchCallback())
    return callbacks


def finish_run(trainer, tokenizer, card: Optional[CardInfo], evaluate: Callable[[Optional[Path]], RunReport], *,
               loss_label: Optional[str] = None, weights=None, save: Optional[Callable[[Path], None]] = None,
               exit_code: int = 0) -> Optional[RunReport]:
    """Finish a trained run in `trainer.args.output_dir` (see the module docstring).

    `evaluate(folder)` gets the verified export folder; `loss_label` names the loss curve's y axis (no curve when
    None); `weights` is a context in which the model holds the weights to export (the EMA); `save(folder)` replaces
    the hubzoo export for a model that is not a hubzoo architecture (the card then stays unused); `exit_code` is the
    status a multi-process CPU run leaves with. Returns the report on the main process, None on the others."""
    report = None
    try:
        if trainer.is_world_process_zero():
            report = _finish(trainer, tokenizer, card, evaluate, loss_label, weights, save)
    except BaseException:
        close_process_group(trainer)
        raise
    close_process_group(trainer, exit_code)
    return report


def _finish(trainer, tokenizer, card, evaluate, loss_label, weights, save) -> RunReport:
    output = Path(trainer.args.output_dir)
    if loss_label:
        plot_loss_curve(trainer.state.log_history, output / "loss_curve.png", ylabel=loss_label)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if save is None:
        with weights() if weights else nullcontext():
            folder = export(model, tokenizer, output / "export", card=card)  # verified
    else:
        folder = output / "export"
        save(folder)
    report = evaluate(folder)
    if save is None and (report.card_metrics or report.card_section):
        add_results_to_card(folder, report.card_metrics, report.card_section)
    (output / "results.json").write_text(json.dumps(report.results, indent=2) + "\n")
    for name, text in report.files.items():
        (output / name).write_text(text)
    if report.write is not None:
        report.write(output)
    for line in report.lines:
        print(line)
    print(f"Exported and verified: {folder}" if save is None else f"Saved: {folder}")
    return report
