"""Replacing an export folder safely: the new export is written into a staging folder next to the target, and only
a finished one replaces the target. The two folders are exchanged in one step where the system can (Linux, macOS);
elsewhere the old export is first moved into the staging folder, and the next export or `verify` puts it back after a
kill between the two renames (`recover_killed_exports`). Only an empty folder or a hubzoo export is ever replaced
(`check_export_target`).
"""

import ctypes
import errno
import functools
import glob
import json
import logging
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from hub_exports.manifest import MANIFEST, read_json_object, read_manifest

logger = logging.getLogger(__name__)
# A staging folder: `staging_<target name>_<pid>_<8 hex>`, holding STAGING_MARKER (written first) and the export.
STAGING_NAME = re.compile(r"staging_(?P<target>.+)_(?P<pid>[0-9]+)_[0-9a-f]{8}")
STAGING_MARKER = "hubzoo_staging.json"


def check_export_target(out_dir, sources=()) -> Path:
    """Refuse, with a ValueError naming it, an `out_dir` that an export may not replace; return its absolute path.

    An export replaces only an empty folder or an earlier hubzoo export holding nothing beyond its own files, never a
    file, a symbolic link (whose target may be anyone's) or a folder that is or holds one of `sources` (the
    checkpoint or tokenizer being exported). Cheap and side-effect free: call it before training or converting."""
    target = Path(os.path.abspath(out_dir))
    target = target.parent.resolve() / target.name  # a symlink in the last component is judged, not followed
    for source in map(Path, sources):
        source = source.resolve()
        if source == target or target in source.parents:
            raise ValueError(f"{target} holds the source {source}: the export would delete it; choose another "
                             "output folder")
    if target.is_symlink():
        raise ValueError(f"{target} is a symbolic link: name the folder itself as the output")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file, not a folder for an export")
    if target.is_dir():
        entries = sorted(target.iterdir())
        recorded = read_manifest(target).get("files") if entries else {}
        if not isinstance(recorded, dict):
            raise ValueError(f"{target} is neither empty nor a hubzoo export (no readable {MANIFEST}): refusing to "
                             "replace it; choose an empty or new output folder")
        shipped = set(recorded) | {"README.md", MANIFEST}
        foreign = [p.name for p in entries if p.name not in shipped or p.is_symlink() or not p.is_file()]
        if foreign:
            raise ValueError(f"{target} is a hubzoo export but also holds {foreign}, which replacing it would "
                             "delete: move them away or choose another output folder")
    return target


def recover_killed_exports(out_dir) -> None:
    """Clean up after exports into `out_dir`'s parent that were killed: put back an earlier export that a kill left
    inside a staging folder (between the two renames of the fallback swap) and delete every staging folder of a dead
    export. Only folders provably ours are touched (see `_abandoned`)."""
    target = Path(os.path.abspath(out_dir))
    parent = target.parent
    for staging in sorted(parent.glob("staging_*")) if parent.is_dir() else ():
        if _abandoned(staging):
            logger.info("removing %s, left by an export that was killed", staging)
            _discard_staging(staging)
    _recover_old_swaps(target)


def _recover_old_swaps(target: Path) -> None:
    """hubzoo 0.1.0 swapped by renaming the old export to `<target>.old-<pid>` first; a kill there left no export at
    the target. Such a folder of a dead process that is a hubzoo export (a manifest, nothing beyond its files) is
    put back when the target is missing, and deleted (as that swap would have) when the target holds an export."""
    for old in sorted(target.parent.glob(f"{glob.escape(target.name)}.old-*")):
        pid = old.name.rpartition(".old-")[2]
        if not pid.isdigit() or _running(int(pid)) or old.is_symlink() or not (old / MANIFEST).is_file():
            continue
        try:
            check_export_target(old)
        except ValueError:
            continue
        if not os.path.lexists(target):
            if not _holds_every_recorded_file(old):  # its deletion was killed half-way: not an export to put back
                logger.warning("%s is an incomplete earlier export; left as it is", old)
                continue
            old.rename(target)
            logger.warning("put the earlier export back at %s (an older hubzoo was killed while replacing it)", target)
        elif (target / MANIFEST).is_file():
            logger.info("removing %s, an earlier export an older hubzoo's swap left behind", old)
            shutil.rmtree(old)


def _holds_every_recorded_file(folder: Path) -> bool:
    recorded = read_manifest(folder).get("files")
    return isinstance(recorded, dict) and all((folder / name).is_file() for name in recorded)


def write_then_swap(target: Path, write, sources=()) -> None:
    """Write an export into a staging folder beside `target` with `write(folder)` (which also verifies it), then swap
    it into place; `target` (and `sources`, which it must not hold) is checked again first, since it may have changed
    while the export was written. Staged under the target's own name: verification imports the exported code from a
    `transformers_modules` package of that name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_killed_exports(target)
    with staging_folder(target) as folder:
        folder.mkdir()
        write(folder)
        check_export_target(target, sources=sources)
        move_into_place(folder, target)


@contextmanager
def staging_folder(target: Path):
    """A new staging folder next to `target` for the duration of the block; yields the path, inside it, where the
    export is to be written (under the target's own name). On leaving, the staging folder is discarded
    (`_discard_staging`), whatever happened."""
    staging = _make_staging(target)
    try:
        yield staging / target.name
    finally:
        _discard_staging(staging)


def _make_staging(target: Path) -> Path:
    """A new staging folder next to `target`, marked as ours (by name and marker file) before anything goes in."""
    staging = target.with_name(f"staging_{target.name}_{os.getpid()}_{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        with open(staging / STAGING_MARKER, "x") as marker:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, marker)
    except BaseException:
        _discard_staging(staging)
        raise
    return staging


def _abandoned(folder: Path) -> bool:
    """A staging folder of a dead export on this host: our name, our marker (or nothing at all: killed before the
    marker was written), and no running process of its pid."""
    match = STAGING_NAME.fullmatch(folder.name)
    try:
        if not match or folder.is_symlink() or not folder.is_dir():
            return False
        if (folder / STAGING_MARKER).is_file():
            # An unreadable marker is one a kill interrupted while it was written, on this host.
            if read_json_object(folder / STAGING_MARKER).get("host", socket.gethostname()) != socket.gethostname():
                return False
        elif any(folder.iterdir()):
            return False
    except OSError:  # e.g. another user's folder: not ours to judge
        return False
    return not _running(int(match["pid"]))


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there; never judge a folder abandoned
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _discard_staging(staging: Path) -> None:
    """Delete a staging folder of ours, after putting back an earlier export that the fallback swap had moved into
    it if the target is still missing (killed between its renames). The marker goes last, so that a folder half
    deleted by a kill is still recognisably ours. A failure is logged: the next export retries."""
    target = staging.parent / STAGING_NAME.fullmatch(staging.name)["target"]
    previous = staging / f"{target.name}.previous"
    try:
        if previous.is_dir() and not os.path.lexists(target):
            previous.rename(target)
            logger.warning("put the earlier export back at %s (an export was killed while replacing it)", target)
        elif previous.is_dir() and not (target / MANIFEST).is_file():
            # Something other than an export took the target's place since: the earlier export is all there is.
            logger.warning("%s holds no export, so the earlier one is kept in %s", target, staging)
            return
        for entry in staging.iterdir():
            if entry.name != STAGING_MARKER:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (staging / STAGING_MARKER).unlink(missing_ok=True)
        staging.rmdir()
    except OSError as error:
        logger.warning("could not remove the staging folder %s (%s); the next export there retries", staging, error)


def move_into_place(new: Path, target: Path) -> None:
    """Put the folder `new` (inside its staging folder) at `target`. An earlier export there is exchanged with it in
    one step where the system can; it then lies at `new` and goes with the staging folder. Elsewhere it is moved
    into the staging folder first: a kill before the second rename leaves it there for `_discard_staging` to put
    back, and a failed second rename puts it back at once."""
    if not os.path.lexists(target):
        new.rename(target)
    elif not _exchange(new, target):
        previous = new.with_name(f"{target.name}.previous")
        target.rename(previous)
        try:
            new.rename(target)
        except BaseException:
            previous.rename(target)
            raise


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically: Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`. False where
    the system or the filesystem offers no such swap."""
    libc = _libc()
    paths = (os.fsencode(first), os.fsencode(second))
    if hasattr(libc, "renameat2"):  # glibc >= 2.28
        at_fdcwd, rename_exchange = -100, 2
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        failed = libc.renameat2(at_fdcwd, paths[0], at_fdcwd, paths[1], rename_exchange)
    elif hasattr(libc, "renamex_np"):
        rename_swap = 2
        libc.renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        failed = libc.renamex_np(*paths, rename_swap)
    else:
        return False
    if not failed:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))
