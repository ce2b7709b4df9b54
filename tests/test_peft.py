"""PEFT on every architecture's export, as a user would use it (issue 15, point 10).

Each case exports the tiny model its conformance declaration builds, then two fresh interpreters use it with
`trust_remote_code` only (tests/peft_driver.py): LoRA with `target_modules="all-linear"` and with the
architecture's conventional attention projections, classification heads in `modules_to_save`, and PEFT's
`task_type` wrappers (`CAUSAL_LM`, `SEQ_CLS`, which call the model with `inputs_embeds`); a training step, the
adapter saved, reloaded on a freshly loaded base in a new process with equal outputs, and merged with equal outputs.
What is compared is PEFT's own contract: an untrained adapter is the identity, a saved one reloads exactly, merging
does not change the function.
"""

import pytest

from tests.client_common import CASES, export_case, run_client

# case -> (the attention projections a user names, the head a classifier trains in full, PEFT's task wrapper)
CONVENTIONS = {
    "ltg_bert_mlm": (["qk_proj", "v_proj"], None, None),  # no PEFT task type for masked LMs
    "ltg_bert_seq_cls": (["qk_proj", "v_proj"], ["classifier"], "SEQ_CLS"),
    "mdlm": (["qkv_proj", "out_proj"], None, None),  # diffusion LMs: no PEFT task type either
    "bd3lm": (["qkv_proj", "out_proj"], None, None),
    "modded_gpt_causal_lm": (["qkv_proj", "o_proj"], None, "CAUSAL_LM"),
    "modded_gpt_seq_cls": (["qkv_proj", "o_proj"], ["score"], "SEQ_CLS"),
    "backpack_causal_lm": (["qkv_proj", "o_proj"], None, "CAUSAL_LM"),
}


def variants(case: str) -> list:
    names, head, task_type = CONVENTIONS[case]
    found = [{"name": "all_linear", "target_modules": "all-linear", "modules_to_save": head},
             {"name": "named_modules", "target_modules": names, "modules_to_save": head, "expect_in_names": True}]
    if task_type:
        found.append({"name": f"task_{task_type.lower()}", "target_modules": "all-linear", "task_type": task_type,
                      "modules_to_save": head})
    return found


def test_every_exported_case_has_its_conventions():
    assert set(CONVENTIONS) == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_lora_train_save_reload_merge(case, tmp_path):
    spec = {**export_case(case, tmp_path / case), "work": str(tmp_path / "adapters"), "variants": variants(case)}
    (tmp_path / "adapters").mkdir()
    trained = run_client("peft_driver", {**spec, "phase": "train"}, tmp_path / "train")
    failed = {name: result for name, result in trained.items() if result != "ok"}
    reloadable = [variant for variant in spec["variants"] if trained.get(variant["name"]) == "ok"]
    if reloadable:  # a new process: nothing of the training process is left
        reloaded = run_client("peft_driver", {**spec, "phase": "reload", "variants": reloadable}, tmp_path / "reload")
        failed.update({f"{name} (reload)": result for name, result in reloaded.items() if result != "ok"})
    assert not failed, "\n\n".join(f"[{name}]\n{result}" for name, result in failed.items())
    assert set(trained) == {variant["name"] for variant in spec["variants"]}
