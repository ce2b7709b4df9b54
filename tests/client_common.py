"""What tests/test_peft.py and tests/test_downstream.py share: every architecture's export built from the tiny
config its conformance declaration uses, and fresh interpreters that use it the way a Hub user does.

A client process never imports hubzoo's `modeling` (in transformers 5 a local registration would win over the
exported code): drivers import only torch, transformers, peft, safetensors and the standard library. They run as
modules (`python -m tests.<driver>`) with the checkout on PYTHONPATH so that `tests` resolves in any checkout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import modeling
from hub_exports import export
from modeling.backpack import BackpackForCausalLM
from modeling.bd3lm import Bd3lmForMaskedDiffusionLM
from modeling.ltg_bert import LtgBertForMaskedLM, LtgBertForSequenceClassification
from modeling.mdlm import MdlmForMaskedDiffusionLM
from modeling.modded_gpt import ModdedGptForCausalLM, ModdedGptForSequenceClassification
# The declarations' modules, not their Test classes: imported by name, pytest would collect and run them again.
from tests.models.backpack import test_modeling_backpack as backpack_declared
from tests.models.bd3lm import test_modeling_bd3lm as bd3lm_declared
from tests.models.ltg_bert import test_modeling_ltg_bert as ltg_bert_declared
from tests.models.mdlm import test_modeling_mdlm as mdlm_declared
from tests.models.modded_gpt import test_modeling_modded_gpt as modded_gpt_declared

REPO_ROOT = Path(__file__).resolve().parents[1]

# case -> (declaration, exported class)
CASES = {
    "ltg_bert_mlm": (ltg_bert_declared.TestLtgBert, LtgBertForMaskedLM),
    "ltg_bert_seq_cls": (ltg_bert_declared.TestLtgBert, LtgBertForSequenceClassification),
    "mdlm": (mdlm_declared.TestMdlm, MdlmForMaskedDiffusionLM),
    "bd3lm": (bd3lm_declared.TestBd3lm, Bd3lmForMaskedDiffusionLM),
    "modded_gpt_causal_lm": (modded_gpt_declared.TestModdedGpt, ModdedGptForCausalLM),
    "modded_gpt_seq_cls": (modded_gpt_declared.TestModdedGpt, ModdedGptForSequenceClassification),
    "backpack_causal_lm": (backpack_declared.TestBackpackStanford, BackpackForCausalLM),
}


def auto_class_of(model_class) -> str:
    """The Auto class the export registers `model_class` under."""
    return modeling.task_class(model_class.config_class.model_type, model_class.__name__)[0]


def export_case(case: str, folder: Path) -> dict:
    """Export the case's tiny model (random weights, seed 0) to `folder`, plus `inputs.safetensors` beside it: the
    declaration's inputs and labels. Returns the driver's view of the case."""
    declaration, model_class = CASES[case]
    declared = declaration()
    model = declared.build(model_class)
    export(model, declared.export_tokenizer(model.config), folder, run_verify=False)
    generator = torch.Generator().manual_seed(1)
    inputs = declared.get_inputs(model.config, batch_size=2, generator=generator)
    labels = declared.get_labels(model_class, model.config, inputs, generator)
    save_file({**inputs, "labels": labels}, folder.with_name(folder.name + "-inputs.safetensors"))
    return {"folder": str(folder), "inputs": str(folder.with_name(folder.name + "-inputs.safetensors")),
            "auto_class": auto_class_of(model_class), "tied": bool(model.config.tie_word_embeddings)
            and model.get_output_embeddings() is not None}


def run_client(driver: str, spec: dict, scratch: Path, timeout: int = 600) -> dict:
    """Run `python -m tests.<driver> <spec.json>` in a fresh interpreter with a private modules cache, offline, in
    `scratch`; return the JSON report it prints last. A crash is reported with its stderr."""
    scratch.mkdir(parents=True, exist_ok=True)
    spec_path = scratch / f"{driver}-{spec.get('phase', 'run')}.json"
    spec_path.write_text(json.dumps(spec))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(scratch / "modules"),
               HF_HOME=str(scratch / "hf_home"), HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", f"tests.{driver}", str(spec_path)], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise AssertionError(f"tests.{driver} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(lines[-1])
