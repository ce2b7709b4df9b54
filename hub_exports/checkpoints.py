"""Loading a saved hubzoo model folder (a Trainer checkpoint, a converter's output, an export) for export or
evaluation: with the local classes, strictly, and only if it was saved by this code."""

import json
from pathlib import Path

from safetensors.torch import load_file

import modeling
from hub_exports.adapter_files import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_FOLDER, is_adapter_folder,
                                       resolve_base_folder, trained_on)
from hub_exports.manifest import MANIFEST, read_json_object, read_manifest


def load_checkpoint(folder):
    """Load a saved hubzoo model folder (e.g. a Trainer checkpoint) with the local classes, strictly.

    Refuses a folder whose own modeling code differs from `modeling/`: exporting it would ship other code than the
    code that produced the weights. An adapter repo (or a LoRA run's checkpoint) is loaded onto its base export, as a
    PeftModel (`load_adapter_model`).
    """
    folder = Path(folder)
    if is_adapter_folder(folder):
        return load_adapter_model(folder)
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or [None]
    _, model_class = modeling.task_class(config.get("model_type"), architectures[0])
    source_dir = Path(modeling.__file__).parent / config["model_type"]
    for code in folder.glob("*.py"):
        source = source_dir / code.name
        if source.is_file() and source.read_bytes() != code.read_bytes():
            raise ValueError(f"{code} differs from {source}: the checkpoint was saved by other modeling code")
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    problems = {key: sorted(map(str, value)) for key, value in info.items() if value}
    if problems:
        raise ValueError(f"{folder} does not load cleanly: {problems}")
    return model


def load_adapter_model(folder, base=None):
    """The adapter in `folder` (an adapter repo, or a LoRA run's Trainer checkpoint) on its base export, both loaded
    strictly: the base with `load_checkpoint`, the adapter refusing missing and unexpected keys."""
    from peft import PeftModel, get_peft_model_state_dict

    if (Path(folder) / "ema.safetensors").is_file():
        raise ValueError(f"{folder} is a Trainer checkpoint of a run with an EMA, whose adapter_model.safetensors "
                         f"holds the live weights, not the averaged ones the run exports: export "
                         f"{Path(folder) / 'export'}")
    base_folder = resolve_base_folder(folder, base)
    manifest = read_manifest(folder)
    recorded = manifest.get("adapter", {})
    if recorded and not trained_on(manifest, base_folder):  # Trainer checkpoints record none
        raise ValueError(f"{base_folder} is not the export the adapter {folder} was trained on (its {MANIFEST} differs "
                         "from the one recorded at export)")
    adapted = recorded.get("adapted", {})
    task_type = read_json_object(Path(folder) / ADAPTER_CONFIG).get("task_type")
    if not adapted and task_type == "SEQ_CLS" and not (Path(folder) / MANIFEST).is_file():
        raise ValueError(f"{folder} is a classification adapter without the manifest that records its labels (a "
                         "Trainer checkpoint): export it from the run's export/ instead")
    model = PeftModel.from_pretrained(load_adapted_base(base_folder, adapted), str(folder))
    stored, expected = set(load_file(Path(folder) / ADAPTER_WEIGHTS)), set(get_peft_model_state_dict(model))
    if stored != expected:  # PEFT only warns of missing keys and says nothing of unexpected ones
        raise ValueError(f"{folder} does not load cleanly onto {base_folder}: unexpected "
                         f"{sorted(stored - expected)[:5]}, missing {sorted(expected - stored)[:5]}")
    setattr(model, BASE_FOLDER, str(base_folder))
    return model.eval()


def load_adapted_base(base_folder: Path, adapted: dict):
    """The base export loaded as the task class an adapter was trained on, giving exactly the recorded loading info."""
    if not adapted:
        return load_checkpoint(base_folder)
    config = read_json_object(base_folder / "config.json")
    _, model_class = modeling.task_class(config.get("model_type"), adapted["class"])
    model, info = model_class.from_pretrained(base_folder, output_loading_info=True, **adapted["kwargs"])
    found = {key: sorted(map(str, value)) for key, value in info.items() if value}
    expected = {key: value for key, value in adapted["loading_info"].items() if value}
    if found != expected:
        raise ValueError(f"{base_folder} loads as {adapted['class']} with {found}, the adapter expects {expected}")
    return model
