"""Kill an export that replaces an earlier one at every step that changes the disk. Used by tests/test_hub_exports.py.

    python -m tests.export_kill_driver OLD_EXPORT WORK_DIR   (from the repository root)

For k = 0, 1, ... a forked child exports a new model over a copy of OLD_EXPORT and dies (`os._exit`, no handler
runs) just before its disk-changing operation number k as an audit hook sees them (a file opened for writing,
mkdir, rename, remove, rmdir, copy, a ctypes call such as the atomic exchange), until one finishes unkilled.
After each kill the parent records what the target holds and what lies beside it, runs what the next export runs
first (`recover_killed_exports`) and records both again. All of it once with the atomic exchange and once with the
two-rename fallback. Prints one JSON report, {mode: [{"kill_at", "after_kill", "left_by_kill", "after_recovery",
"left"}]}; each mode's unkilled export stays at WORK_DIR/<mode>/export.
"""

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import torch

import hub_exports.exporting as exporting
import hub_exports.folder_swap as folder_swap
from tests.modeling_common import tiny_tokenizer
from tests.test_hub_exports import snapshot, tiny_model

CHANGES = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.link",
           "os.symlink", "shutil.copyfile", "shutil.rmtree", "ctypes.call_function"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
KILLED = 137
countdown = None  # set in a child: operations left before it dies


def die_at_countdown(event, args):
    global countdown
    if countdown is None:
        return
    if event == "open":
        mode, flags = args[1], args[2]
        changes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
    else:
        changes = event in CHANGES
    if changes:
        countdown -= 1
        if countdown < 0:
            os._exit(KILLED)


def state(target: Path, old: dict, new: dict) -> str:
    if not os.path.lexists(target):
        return "missing"
    files = snapshot(target)
    return "old" if files == old else "new" if files == new else "other"


def kill_at_every_step(old_export: Path, work: Path, model, tokenizer, new: dict) -> list:
    target, records, kill_at = work / "export", [], 0
    old = snapshot(old_export)
    while True:
        shutil.copytree(old_export, target)
        child = os.fork()
        if child == 0:
            global countdown
            countdown = kill_at
            try:
                exporting.export(model, tokenizer, target, run_verify=False)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        if code == 0:
            return records
        if code != KILLED:
            raise RuntimeError(f"the export killed at step {kill_at} failed instead")
        record = {"kill_at": kill_at, "after_kill": state(target, old, new),
                  "left_by_kill": sorted(p.name for p in work.iterdir())}
        folder_swap.recover_killed_exports(target)
        record.update(after_recovery=state(target, old, new), left=sorted(p.name for p in work.iterdir()))
        records.append(record)
        shutil.rmtree(target, ignore_errors=True)
        kill_at += 1


def main(old_export, work):
    old_export, work = Path(old_export), Path(work)
    torch.set_num_threads(1)  # no thread pool in the parent, so that forked children may compute
    sys.addaudithook(die_at_countdown)
    model, tokenizer = tiny_model(hidden_size=16), tiny_tokenizer(64)
    # The reference gets a tokenizer of its own: the probe in an export leaves padding switched on in the one it uses.
    new = snapshot(exporting.export(model, tiny_tokenizer(64), work / "reference", run_verify=False))
    shutil.rmtree(work / "reference")
    report = {"exchange": kill_at_every_step(old_export, work / "exchange", model, tokenizer, new)}
    folder_swap._exchange = lambda first, second: False  # as on a system without an atomic exchange
    report["renames"] = kill_at_every_step(old_export, work / "renames", model, tokenizer, new)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:3])
