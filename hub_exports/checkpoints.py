"""Loading a saved hubzoo model folder (a Trainer checkpoint, a converter's output, an export) for export or
evaluation: with the local classes, strictly, and only if it was saved by this code."""

import json
from pathlib import Path

import modeling


def load_checkpoint(folder):
    """Load a saved hubzoo model folder (e.g. a Trainer checkpoint) with the local classes, strictly.

    Refuses a folder whose own modeling code differs from `modeling/`: exporting it would ship other code than the
    code that produced the weights. An adapter repo (or a LoRA run's checkpoint) is loaded onto its base export, as a
    PeftModel (`hub_exports.adapters.load_adapter_model`).
    """
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        from hub_exports.adapters import load_adapter_model

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
