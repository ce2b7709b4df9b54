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


# Markers that transformers' common tests (tests/transformers_common) put on their tests; its own conftest, which
# registers them, is not in the sdist. `--strict-markers` stays on for ours.
TRANSFORMERS_MARKERS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
                        "torch_compile_test", "torch_export_test", "is_staging_test", "is_pipeline_test",
                        "is_agent_test", "is_training_test", "is_tensor_parallel_test", "is_expert_parallel_test",
                        "is_fsdp_test", "order", "generate", "bitsandbytes", "not_device_test")


def pytest_configure(config):
    for marker in TRANSFORMERS_MARKERS:
        config.addinivalue_line("markers", f"{marker}: set by transformers' common tests")
