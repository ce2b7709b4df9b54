"""transformers' own common model tests, taken from the source distribution of the installed release at test time.

The sdist of transformers ships `tests/test_modeling_common.py` and `tests/test_configuration_common.py` but not the
three modules they import from sibling folders (`generation/test_utils.py`, `exporters/test_export.py`,
`utils/test_configuration_utils.py`). Those three are our own equivalents (`generation_checks.py`,
`export_checks.py`, `config_kwargs.py` in this folder), installed next to the upstream files under the names the
upstream files import. Nothing of transformers' is committed: the files are extracted into
`<repo>/.venv/transformers-tests-<version>/` (git-ignored) on first use.
"""
from __future__ import annotations

import fcntl
import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
import transformers

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "transformers_upstream_tests"
UPSTREAM_FILES = ("test_modeling_common.py", "test_configuration_common.py")
# Upstream import name -> our module that stands in for it.
STAND_INS = {
    "generation/test_utils.py": "tests.transformers_common.generation_checks",
    "exporters/test_export.py": "tests.transformers_common.export_checks",
    "utils/test_configuration_utils.py": "tests.transformers_common.config_kwargs",
}


def _download_sdist(version: str, into: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--no-binary", ":all:", f"transformers=={version}", "-d", str(into)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    archives = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise RuntimeError(f"could not download the transformers {version} source distribution:\n{proc.stdout[-2000:]}")
    return archives[0]


def _build(root: pathlib.Path, version: str) -> None:
    """Extract the upstream files and the stand-ins into `root/PACKAGE`, built aside and renamed into place."""
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f"{root.name}.tmp-", dir=root.parent))
    try:
        archive = _download_sdist(version, staging)
        package = staging / PACKAGE
        package.mkdir()
        with tarfile.open(archive) as tar:
            for name in UPSTREAM_FILES:
                member = tar.getmember(f"transformers-{version}/tests/{name}")
                (package / name).write_bytes(tar.extractfile(member).read())
        archive.unlink()
        (package / "__init__.py").write_text(f'"""transformers {version} common tests (from its sdist)."""\n')
        for relative, module in STAND_INS.items():
            path = package / relative
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(f'"""Stand-in: the sdist lacks this module."""\nfrom {module} import *  # noqa: F401,F403\n')
        os.rename(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def upstream_tests_root() -> pathlib.Path:
    """The folder holding `PACKAGE` for the installed transformers, building it on first use."""
    version = transformers.__version__
    root = REPO_ROOT / ".venv" / f"transformers-tests-{version}"
    if (root / PACKAGE / "__init__.py").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; latecomers reuse its result
        if not (root / PACKAGE / "__init__.py").exists():
            shutil.rmtree(root, ignore_errors=True)
            _build(root, version)
    return root


def import_upstream(name: str):
    """Import `PACKAGE.<name>`; without the sdist, fail in CI and skip elsewhere (the reason says why)."""
    try:
        root = upstream_tests_root()
    except RuntimeError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"transformers' common tests need its sdist from PyPI: {error}", allow_module_level=True)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{PACKAGE}.{name}")
