"""Trainer checkpoints appear only when complete (issue 14.3-14.5). Faults are injected into the writers of the save
at step 4 (the optimizer's `torch.save`, the EMA's `save_file`, the checkpoint export), as an exception or as a kill
of the process, with `save_total_limit=1`; the run must then show no incomplete `checkpoint-N`, keep checkpoint-2
(the newest complete one), and resume from it at the next start, which also removes the unfinished save."""

import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from tests.diffusion_trainer_driver import MASK_ID, PAD_ID, VOCAB, rows_dataset, tiny_model
from trainers.callbacks import ExportCheckpointCallback
from trainers.collators import DiffusionCollator
from trainers.diffusion_trainer import MaskedDiffusionTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
KILLED = 137
COMPLETE = {"trainer_state.json", "optimizer.pt", "model.safetensors", "ema.safetensors", "export"}
WRITERS = {  # fault name: (what is patched, the file it writes, the argument holding the path)
    "optimizer": ("torch.save", "optimizer.pt", 1),
    "ema": ("trainers.ema.save_file", "ema.safetensors", 1),
    "export": ("trainers.callbacks.export", "export", 2),
}


class RecordSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def steps_trained(trainer) -> list:
    return next(callback for callback in trainer.callback_handler.callbacks if isinstance(callback, RecordSteps)).steps


def make_trainer(output_dir, max_steps: int, **args) -> MaskedDiffusionTrainer:
    """A tiny MDLM run saving every 2 steps (with EMA and, through a stand-in export, `export/`), keeping one."""
    arguments = TrainingArguments(**{**dict(
        output_dir=str(output_dir), max_steps=max_steps, save_strategy="steps", save_steps=2, save_total_limit=1,
        logging_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, use_cpu=True, report_to="none",
        dataloader_num_workers=0, disable_tqdm=True, seed=0), **args})
    trainer = MaskedDiffusionTrainer(model=tiny_model("mdlm"), args=arguments, train_dataset=rows_dataset(),
                                     data_collator=DiffusionCollator(PAD_ID, MASK_ID, VOCAB), ema_decay=0.9,
                                     callbacks=[RecordSteps()])
    trainer.add_callback(ExportCheckpointCallback(tokenizer=None, card=None))
    return trainer


def stand_in_export(model, tokenizer, out_dir, card=None):
    """hub_exports.export (tested in test_hub_exports) without its verification: stages, then renames into place."""
    staging = tempfile.mkdtemp(prefix="staging_export_", dir=Path(out_dir).parent)
    model.save_pretrained(staging)
    os.replace(staging, out_dir)


@pytest.fixture(autouse=True)
def _stand_in_export(monkeypatch):
    monkeypatch.setattr("trainers.callbacks.export", stand_in_export)


def torn_at_second_save(original, file_name: str, path_argument: int, kill: bool):
    """`original`, except that its second write of `file_name` (the save at step 4) stops half-way: it leaves a
    partial file (for the export: the staging folder a kill during `export` leaves), then raises or kills."""
    seen = []

    def write(*args, **kwargs):
        path = Path(args[path_argument])
        if path.name == file_name:
            seen.append(path)
            if len(seen) == 2:
                if file_name == "export":
                    path = path.parent / "staging_export_torn"
                    path.mkdir()
                    path = path / "model.safetensors"
                path.write_bytes(b"torn")
                if kill:
                    os._exit(KILLED)
                raise OSError(f"injected fault writing {path}")
        return original(*args, **kwargs)

    return write


def train_with_fault(output_dir, fault: str, kill: bool = False):
    """Train to step 4 (saves at 2 and 4) with `fault` injected into the save at step 4."""
    target, file_name, path_argument = WRITERS[fault]
    with ExitStack() as patches:
        patches.enter_context(mock.patch("trainers.callbacks.export", stand_in_export))
        faulty = torn_at_second_save(pkgutil.resolve_name(target), file_name, path_argument, kill)
        patches.enter_context(mock.patch(target, faulty))
        make_trainer(output_dir, max_steps=4).train()


def visible_checkpoints(output_dir) -> list:
    return sorted(path.name for path in Path(output_dir).iterdir() if re.fullmatch(r"checkpoint-\d+", path.name))


def assert_checkpoint_2_is_the_resume_point(output_dir):
    assert visible_checkpoints(output_dir) == ["checkpoint-2"], "an incomplete checkpoint-4 is visible"
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")  # what Trainer would pick
    assert COMPLETE <= {path.name for path in (output_dir / "checkpoint-2").iterdir()}


def assert_resumes_from_checkpoint_2(output_dir):
    resumed = make_trainer(output_dir, max_steps=6)
    resumed.train(resume_from_checkpoint=True)
    assert steps_trained(resumed) == [3, 4, 5, 6]
    assert sorted(os.listdir(output_dir)) == ["checkpoint-6"], "the unfinished save was not removed"
    assert COMPLETE <= {path.name for path in (output_dir / "checkpoint-6").iterdir()}
    assert not list((output_dir / "checkpoint-6").glob("staging_*"))


@pytest.mark.parametrize("fault", WRITERS)
def test_a_failed_save_leaves_the_previous_checkpoint_as_the_resume_point(tmp_path, fault):
    """14.3 (optimizer), 14.4 (EMA: rotation waits for it), 14.5 (export): the failure stops training and says so;
    checkpoint-4 never appears, checkpoint-2 survives `save_total_limit=1`, and the run resumes from it."""
    with pytest.raises(OSError, match="injected fault") as failure:
        train_with_fault(tmp_path, fault)
    assert_checkpoint_2_is_the_resume_point(tmp_path)
    assert any("checkpoint-4 was not saved" in note and "checkpoint-2" in note
               for note in getattr(failure.value, "__notes__", []))
    assert_resumes_from_checkpoint_2(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("fault", WRITERS)
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_as_the_resume_point(tmp_path, fault):
    """The same with the process killed (os._exit) half-way through the write: nothing runs after the fault."""
    code = "import sys; from tests.test_checkpoints import train_with_fault; train_with_fault(sys.argv[1], " \
           "sys.argv[2], kill=True)"
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path), fault], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == KILLED, run.stderr[-3000:]
    assert_checkpoint_2_is_the_resume_point(tmp_path)
    assert_resumes_from_checkpoint_2(tmp_path)


def test_resume_skips_an_incomplete_checkpoint_and_refuses_one_named(tmp_path):
    """A checkpoint-4 without trainer_state.json (an in-place save interrupted, as before the fix): resuming from
    the newest picks checkpoint-2; naming checkpoint-4 is refused before any work, naming the missing file."""
    make_trainer(tmp_path, max_steps=4, save_total_limit=None).train()
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    refused = make_trainer(tmp_path, max_steps=6)
    initial = {name: param.detach().clone() for name, param in refused.model.named_parameters()}
    with pytest.raises(ValueError, match=r"checkpoint-4 cannot be resumed from: it lacks trainer_state\.json"):
        refused.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert all(torch.equal(param, initial[name]) for name, param in refused.model.named_parameters())
    resumed = make_trainer(tmp_path, max_steps=6, save_total_limit=None)
    resumed.train(resume_from_checkpoint=True)
    assert steps_trained(resumed) == [3, 4, 5, 6]
    assert visible_checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4


def test_a_save_folder_is_not_a_checkpoint_to_resume_from(tmp_path):
    with pytest.raises(ValueError, match="did not finish"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=str(tmp_path / "staging_checkpoints" /
                                                                              "checkpoint-2"))
    with pytest.raises(ValueError, match="no complete checkpoint to resume from"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)


def test_a_resave_of_the_same_step_replaces_it_and_a_kill_in_the_swap_puts_the_old_one_back(tmp_path):
    make_trainer(tmp_path, max_steps=2).train()
    first = (tmp_path / "checkpoint-2" / "trainer_state.json").read_text()
    original_replace = os.replace

    def killed_before_the_new_one_is_in_place(source, destination):
        if Path(source).parent.name == "staging_checkpoints" and Path(source).name == "checkpoint-2":
            raise OSError("injected fault: killed between the two renames")
        return original_replace(source, destination)

    with mock.patch("os.replace", killed_before_the_new_one_is_in_place), pytest.raises(OSError, match="injected"):
        make_trainer(tmp_path, max_steps=2, learning_rate=1e-3).train()
    assert visible_checkpoints(tmp_path) == []
    make_trainer(tmp_path, max_steps=1, save_strategy="no").train()  # the next start tidies up
    assert os.listdir(tmp_path) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").read_text() == first
    make_trainer(tmp_path, max_steps=2, learning_rate=1e-3).train()  # the re-run, uninterrupted
    assert os.listdir(tmp_path) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").read_text() != first


def test_the_files_of_a_checkpoint_need_a_trainer_that_saves_them(tmp_path):
    """Checkpoint extras are written by CompleteCheckpointsMixin; with a plain Trainer they would silently be missing,
    so the save is refused instead."""
    from tests.mlm_trainer_driver import one_step_args, premasked_dataset
    from tests.mlm_trainer_driver import tiny_model as tiny_mlm

    args = one_step_args(tmp_path, batch_size=4)
    args.save_strategy, args.save_steps = "steps", 1
    trainer = Trainer(model=tiny_mlm(), args=args, train_dataset=premasked_dataset(),
                      data_collator=default_data_collator, callbacks=[ExportCheckpointCallback(None, None)])
    with pytest.raises(RuntimeError, match="CompleteCheckpointsMixin"):
        trainer.train()


def test_every_hubzoo_trainer_saves_complete_checkpoints():
    from trainers.checkpoints import CompleteCheckpointsMixin
    from trainers.classification_trainer import ClassificationTrainer
    from trainers.clm_trainer import CausalLMTrainer
    from trainers.latent_wire_trainer import LatentWireTrainer
    from trainers.mlm_trainer import MaskedLMTrainer

    for trainer_class in (MaskedDiffusionTrainer, MaskedLMTrainer, CausalLMTrainer, LatentWireTrainer,
                          ClassificationTrainer):
        assert issubclass(trainer_class, CompleteCheckpointsMixin), trainer_class


def test_a_checkpoint_is_pushed_only_when_complete(tmp_path, monkeypatch):
    """With push_to_hub, Trainer pushes from inside its save; the push must see the published checkpoint, EMA and
    export included, not the staging folder."""
    pushed = []

    def record(self, checkpoint_folder):
        pushed.append((Path(checkpoint_folder), {path.name for path in Path(checkpoint_folder).iterdir()}))

    monkeypatch.setattr(Trainer, "_push_from_checkpoint", record)
    monkeypatch.setattr(Trainer, "init_hf_repo", lambda self, token=None: None)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.args.push_to_hub = True
    trainer.train()
    assert [folder for folder, _ in pushed] == [tmp_path / "checkpoint-2"]
    assert COMPLETE <= pushed[0][1]
