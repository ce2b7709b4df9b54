"""A second, cached virtualenv with another transformers release, for compat tests.

``compat_python("4.57.6")`` returns the interpreter of
``<repo>/.venv/compat-transformers-4.57.6/``, building it on first use with
transformers at that version, CPU torch, safetensors and tokenizers. Run code in
it through the returned interpreter (``python -I -c ...`` / ``python -m ...``):
the env is built elsewhere and renamed into place, so the shebangs of its
``bin/`` scripts (pip, transformers-cli, ...) point at a directory that is gone.
"""
from __future__ import annotations

import fcntl
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Same pin as the main venv: torch must be named in the same pip command as
# transformers, or pip resolves a multi-GB CUDA build on its own.
TORCH_REQ = "torch==2.13.0"
SMOKE = "import torch, transformers; print(transformers.__version__)"


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def compat_python(transformers_version: str = "4.57.6") -> pathlib.Path:
    """Return the python of the compat env for ``transformers_version``, building it if missing."""
    final = REPO_ROOT / ".venv" / f"compat-transformers-{transformers_version}"
    python = final / "bin" / "python"
    # Only a fully built and smoke-tested env is ever renamed to `final`, so
    # an existing interpreter there means done; no subprocess on this path.
    if python.exists():
        return python
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (e.g. pytest-xdist workers); latecomers wait, then reuse.
    with open(final.parent / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():
            return python
        # Holding the lock, anything left here is debris from a killed build
        # or an env whose base interpreter has since disappeared.
        for stale in [final, *final.parent.glob(f"{final.name}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700, which the renamed env would keep
        try:
            # From inside a venv, `-m venv` bases the new env on the same base
            # interpreter (sys._base_executable), not on the main venv.
            _run([sys.executable, "-m", "venv", str(tmp)], "creating venv")
            tmp_python = str(tmp / "bin" / "python")
            _run([tmp_python, "-m", "pip", "install", "--progress-bar", "off",
                  f"transformers=={transformers_version}", TORCH_REQ,
                  "safetensors", "tokenizers"], f"pip install into {tmp}")
            # -I: ignore PYTHONPATH and the cwd, so the main checkout can't leak in.
            got = _run([tmp_python, "-I", "-c", SMOKE], "smoke import").strip().splitlines()
            if not got or got[-1] != transformers_version:
                raise RuntimeError(f"smoke import printed {got!r}, wanted {transformers_version}")
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed
    return python
