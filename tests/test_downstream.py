"""The downstream round trip of every architecture's export (issue 15, point 12).

A user loads the export with `trust_remote_code`, saves it with `save_pretrained` into a folder of their own, and
loads that in a fresh process: the exported class, empty loading info, no warning, the head tied, the same outputs.
Loading it with `dtype=torch.bfloat16`, `device_map="cpu"` or `attn_implementation="eager"`/`"sdpa"` is as clean,
keeps the head tied and gives the float32 outputs (bfloat16: within its precision). A class that declares no SDPA
support may refuse `"sdpa"` with transformers' own error, and only then.
"""

import pytest

from tests.client_common import CASES, export_case, run_client

OPTIONS = [{"dtype": "bfloat16"}, {"device_map": "cpu"}, {"attn_implementation": "eager"},
           {"attn_implementation": "sdpa"}]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_save_pretrained_by_a_user_reloads_cleanly(case, tmp_path):
    spec = {**export_case(case, tmp_path / case), "work": str(tmp_path / "user"), "options": OPTIONS}
    (tmp_path / "user").mkdir()
    saved = run_client("downstream_driver", {**spec, "phase": "save"}, tmp_path / "save")
    assert saved == {"save": "ok"}, saved["save"]
    results = run_client("downstream_driver", {**spec, "phase": "reload"}, tmp_path / "reload")
    assert set(results) == {"reload"} | {str(options) for options in OPTIONS}
    failed = {step: result for step, result in results.items() if result != "ok" and not result.startswith("refused")}
    assert not failed, "\n\n".join(f"[{step}]\n{result}" for step, result in failed.items())
