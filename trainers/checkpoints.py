"""Trainer checkpoints that become visible only when complete, and resume from the newest complete one.

Trainer writes `checkpoint-N` in place (weights, optimizer, scheduler, per-rank RNG state, `trainer_state.json`),
rotates older checkpoints away, and only then lets callbacks add their files (the EMA shadow, the verified export).
A kill anywhere in that sequence leaves a `checkpoint-N` that `get_last_checkpoint` picks and resuming fails on, and
with `save_total_limit` the rotation may already have deleted the last good one.

`CompleteCheckpointsMixin` saves into `<run dir>/staging_checkpoints/checkpoint-N` instead: Trainer's own files (by
every process), then the files of every `CheckpointExtras` callback, all flushed to disk; then the saving process
renames the folder to `<run dir>/checkpoint-N` and only then rotates. Neither `get_last_checkpoint`'s
`^checkpoint-(\\d+)$` nor rotation's `checkpoint-*` glob sees the staging folder, so after a kill at any point the
newest visible checkpoint is a complete one. Unfinished saves are removed when training next starts.
"""

import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hub_exports.adapter_files import is_peft_model
from trainers.adapters import check_resumed_adapter

logger = logging.getLogger(__name__)

STAGING_DIR = "staging_checkpoints"
REPLACED_PREFIX = "replaced-"  # a visible checkpoint moved aside while a re-run's save of the same step takes its place
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Trainer writes its state last, after weights, optimizer and RNG state: without it, a save did not finish.
TRAINER_FILES = {TRAINER_STATE_NAME: "the trainer state, which Trainer writes last: the save did not finish"}


class IncompleteCheckpointError(ValueError, FileNotFoundError):
    """A checkpoint to resume from lacks files a resume needs (a bad input that is also a missing file)."""


class CheckpointExtras(TrainerCallback):
    """A callback that adds files to every checkpoint, written by `CompleteCheckpointsMixin` into the staging folder
    on the saving process(es), before the checkpoint becomes visible.

    Subclasses implement `write_checkpoint_extras(folder, model, state)`; `resume_files` ({name: what it holds}) are
    the files a checkpoint must hold to resume from; `resume_from` is set by the mixin before training to the
    checkpoint training resumes from (None for a fresh start)."""

    resume_files: dict = {}
    resume_from = None
    _saved_step = None

    def write_checkpoint_extras(self, folder: Path, model, state) -> None:
        raise NotImplementedError

    def save_into(self, folder: Path, model, state) -> None:
        self.write_checkpoint_extras(folder, model, state)
        self._saved_step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        # Used with a Trainer that does not save through the mixin, these files would silently be missing.
        if args.should_save and self._saved_step != state.global_step:
            raise RuntimeError(f"{type(self).__name__} writes into checkpoints through CompleteCheckpointsMixin, "
                               "which this Trainer does not use: its checkpoint lacks those files")


class CompleteCheckpointsMixin:
    """For every hubzoo `Trainer` subclass: checkpoints are staged, completed with the `CheckpointExtras` callbacks'
    files, flushed, renamed into place, and only then are older ones rotated away (see the module docstring).

    Why redirect `_get_output_dir` rather than rewrite `_save_checkpoint`: Trainer's own save (sharded FSDP and
    DeepSpeed states, per-rank RNG files, stateful callbacks, best-model bookkeeping) changes between versions; with
    the run dir pointing at the staging folder for the duration of `super()._save_checkpoint`, all of it is written
    there unchanged, and its rotation sees only the one staged checkpoint, so it deletes nothing. The mixin then
    re-points `best_model_checkpoint` at the visible folder and rotates the real run dir itself."""

    _saving_to_staging = False

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._saving_to_staging else run_dir

    def _checkpoint_extras(self) -> list:
        return [callback for callback in self.callback_handler.callbacks if isinstance(callback, CheckpointExtras)]

    def _resume_files(self) -> dict:
        files = dict(TRAINER_FILES)
        for extras in self._checkpoint_extras():
            files.update(extras.resume_files)
        return files

    # ---- resume ----
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """As Trainer's, but `resume_from_checkpoint=True` picks the newest complete checkpoint and a named one must be
        complete (refused before any work, naming what it lacks); unfinished saves of an earlier run are removed."""
        checkpoint = self.complete_checkpoint(resume_from_checkpoint)
        model = self.accelerator.unwrap_model(self.model)
        if checkpoint and is_peft_model(model):
            check_resumed_adapter(model, checkpoint)
        if self.args.should_save:
            remove_unfinished_saves(self._get_output_dir(trial))
        self.accelerator.wait_for_everyone()  # no rank looks at the run dir while it is tidied
        for extras in self._checkpoint_extras():
            extras.resume_from = checkpoint
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def complete_checkpoint(self, resume_from_checkpoint):
        """The checkpoint to resume from (None for a fresh start): for True the newest complete one of output_dir."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        required = self._resume_files()
        if resume_from_checkpoint is True:
            return newest_complete_checkpoint(self.args.output_dir, required)
        folder = Path(resume_from_checkpoint)
        if folder.parent.name == STAGING_DIR:
            raise IncompleteCheckpointError(f"{folder} is a save that did not finish, not a checkpoint; resume from a "
                                            f"checkpoint-N folder of {folder.parent.parent}")
        missing = missing_files(folder, required)
        if missing:
            raise IncompleteCheckpointError(f"{folder} cannot be resumed from: it lacks {'; '.join(missing)}")
        return resume_from_checkpoint

    # ---- save ----
    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, target = Path(run_dir, STAGING_DIR, name), Path(run_dir, name)
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # a failed earlier attempt at this step: start empty
        self.accelerator.wait_for_everyone()
        try:
            self._saving_to_staging = True
            try:
                super()._save_checkpoint(model, trial)  # every process writes its part (RNG state, shards)
            finally:
                self._saving_to_staging = False
            self._point_best_checkpoint_at(run_dir, staged)
            self.accelerator.wait_for_everyone()  # every rank's files are in before the folder is published
            if self.args.should_save:
                for extras in self._checkpoint_extras():
                    extras.save_into(staged, self.model, self.state)
                fsync_tree(staged)
                publish(staged, target)
        except BaseException as error:
            previous = newest_complete_checkpoint(run_dir, self._resume_files(), must_exist=False)
            error.add_note(f"{name} was not saved: its unfinished save {staged} is not resumable and is removed when "
                           f"training next starts; the newest complete checkpoint is {previous or 'none'}")
            raise
        if self.args.should_save:
            logger.info("%s complete: %s", name, ", ".join(sorted(path.name for path in target.iterdir())))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(target))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer pushes from inside its save, i.e. from the staging folder before the extras are in: push the
        checkpoint once it is complete instead (`_save_checkpoint`)."""
        if not self._saving_to_staging:
            super()._push_from_checkpoint(checkpoint_folder)

    def _point_best_checkpoint_at(self, run_dir, staged: Path) -> None:
        """Trainer recorded the best checkpoint where it wrote it (the staging folder): point it at the visible one,
        in the state and in the staged `trainer_state.json` (which a resume reads)."""
        best = self.state.best_model_checkpoint
        if best is None or Path(best).parent != staged.parent:
            return
        self.state.best_model_checkpoint = os.path.join(run_dir, Path(best).name)
        if self.args.should_save:
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))


def missing_files(folder: Path, required: dict) -> list:
    """'name (what it holds)' for each required file `folder` lacks; all of them when it is not a folder."""
    return [f"{name} ({what})" for name, what in required.items() if not (Path(folder) / name).exists()]


def newest_complete_checkpoint(run_dir, required: dict, must_exist: bool = True):
    """The `checkpoint-N` of `run_dir` with the highest N that holds every required file (incomplete ones, left by
    in-place saves of earlier versions, are skipped with a warning). When there is none: an
    `IncompleteCheckpointError`, or None without `must_exist`."""
    run_dir = Path(run_dir)
    found = sorted((int(match[1]), path) for path in (run_dir.iterdir() if run_dir.is_dir() else ())
                   if (match := CHECKPOINT_NAME.match(path.name)) and path.is_dir())
    skipped = []
    for _, path in reversed(found):
        missing = missing_files(path, required)
        if not missing:
            if skipped:
                logger.warning("newest complete checkpoint: %s; skipped: %s", path, "; ".join(skipped))
            return str(path)
        skipped.append(f"{path.name} lacks {', '.join(missing)}")
    if must_exist:
        raise IncompleteCheckpointError(f"no complete checkpoint to resume from in {run_dir}"
                                        + (f": {'; '.join(skipped)}" if skipped else ""))
    return None


def publish(staged: Path, target: Path) -> None:
    """Rename the complete `staged` folder to `target`. A `target` already there (a re-run saving the same step) is
    moved into the staging folder first and deleted only once the new one is in place; a kill in between leaves it
    there, and `remove_unfinished_saves` puts it back."""
    replaced = staged.parent / f"{REPLACED_PREFIX}{target.name}"
    if target.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(target, replaced)
    os.replace(staged, target)
    fsync_path(target.parent)  # the rename itself reaches the disk
    shutil.rmtree(replaced, ignore_errors=True)
    remove_if_empty(staged.parent)


def remove_unfinished_saves(run_dir) -> None:
    """Remove the saves in `run_dir/staging_checkpoints` that never became visible (they are not resumable); put back
    a checkpoint that a killed re-save had moved aside. Anything else found there is not ours and is left alone."""
    staging = Path(run_dir) / STAGING_DIR
    if not staging.is_dir():
        return
    for entry in staging.iterdir():
        name = entry.name.removeprefix(REPLACED_PREFIX)
        if not CHECKPOINT_NAME.match(name):
            continue
        if entry.name != name and not (staging.parent / name).exists():
            os.replace(entry, staging.parent / name)
            logger.warning("%s put back: a save of the same step was interrupted before replacing it", name)
        else:
            shutil.rmtree(entry)
            logger.warning("removed %s: a checkpoint save that did not finish", entry)
    if not remove_if_empty(staging):
        logger.warning("%s holds files that are not checkpoint saves; left as it is", staging)


def remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so that the rename publishing it cannot reach the disk
    before its contents (a machine crash, not just a killed process)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root, name))
        fsync_path(Path(root))


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
