"""The files of an adapter repo (a LoRA run's export, `hub_exports/adapters.py`) and of the PEFT models that make
them: what they are called, how to tell them, and where an adapter's base export is."""

from pathlib import Path

from hub_exports.manifest import MANIFEST, file_digest, read_json_object, read_manifest

ADAPTER_CONFIG = "adapter_config.json"  # PEFT's: the folder is an adapter repo (or a LoRA run's checkpoint)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md", MANIFEST}
BASE_FOLDER = "hubzoo_base_folder"  # attribute of a PeftModel made by hubzoo: the local folder of its base export


def is_peft_model(model) -> bool:
    """A model wrapped by PEFT (`PeftModel` and its task subclasses); checked without importing peft."""
    return type(model).__module__.split(".")[0] == "peft"


def is_adapter_folder(folder) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def base_name(model) -> str:
    """What the adapter config names as the base (a Hub id or a folder)."""
    return model.peft_config[model.active_adapter].base_model_name_or_path


def base_folder_of(model) -> Path:
    """The local folder of a PeftModel's base export."""
    folder = getattr(model, BASE_FOLDER, None) or base_name(model)
    if not (Path(folder) / MANIFEST).is_file():
        raise ValueError(f"the adapter's base {folder} is not a local hubzoo export folder")
    return Path(folder).resolve()


def resolve_base_folder(adapter_folder, base=None) -> Path:
    """The local base export of the adapter in `adapter_folder`: `base` if given, else the folder its config names,
    else the folder recorded at export (both only if they are hubzoo exports). A base named by Hub id needs `base`."""
    named = read_json_object(Path(adapter_folder) / ADAPTER_CONFIG).get("base_model_name_or_path")
    recorded = read_manifest(adapter_folder).get("adapter", {}).get("base_folder")
    for candidate in ([base] if base else [named, recorded]):
        if candidate and (Path(candidate) / MANIFEST).is_file():
            return Path(candidate).resolve()
    if base:
        raise ValueError(f"--base {base} is not a hubzoo export folder (no {MANIFEST})")
    raise ValueError(f"the base {named!r} of the adapter {adapter_folder} is not a local hubzoo export: pass the "
                     "folder of a local copy of it as base (--base)")


def trained_on(adapter_manifest: dict, base_folder) -> bool:
    """Whether `base_folder` is the export the adapter was trained on: the sha256 of its manifest (which fingerprints
    every file of the base) is the one recorded at export."""
    recorded = adapter_manifest.get("adapter", {}).get("base_manifest_sha256")
    return recorded is not None and file_digest(Path(base_folder) / MANIFEST) == recorded


def check_hub_id(name, what: str) -> None:
    """`name` must be a Hub repo id (org/name), not a path: the adapter repo names its base by it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except (HFValidationError, TypeError):
        raise ValueError(f"{what} must be a Hub id such as org/name, got {name!r}") from None
    if Path(name).exists() or "/" not in name:
        raise ValueError(f"{what} must be a Hub id such as org/name (where the base export is pushed), got {name!r}")
