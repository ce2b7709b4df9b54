"""Shared fixtures. `HUBZOO_SHARED` points at the project's `../shared` (golden fixtures, real data); `.ci/run` sets
it. Outside CI a test that needs it is skipped with that reason; in CI its absence is an error."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    value = os.environ.get("HUBZOO_SHARED")
    if not value:
        if os.environ.get("CI"):
            pytest.fail("HUBZOO_SHARED is not set in CI; .ci/run must point it at ../shared")
        pytest.skip("needs ../shared: set HUBZOO_SHARED=/path/to/shared (CI always does)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"HUBZOO_SHARED={value} is not a directory")
    return path


@pytest.fixture(autouse=True)
def _isolated_hf_cache(tmp_path_factory, monkeypatch):
    """Remote-code modules and Hub caches go to a per-session temp dir; no test touches the network."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("HF_MODULES_CACHE", str(base / "hf_modules"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
