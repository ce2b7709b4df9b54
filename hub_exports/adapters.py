"""Adapter repos: the export of a LoRA run (`trainers/adapters.py`) is a PEFT adapter over a hubzoo base export.

An adapter repo holds `adapter_config.json` (its `base_model_name_or_path` names the base: a Hub id, or the base
export's folder), `adapter_model.safetensors`, the model card (`library_name: peft`, `base_model`) and the manifest
(`hubzoo_export.json`: file hashes, the probe and the adapted model's outputs on it, like a full export's, plus the
base it was trained on: its name, its folder at export time and the sha256 of the base's own manifest, which
fingerprints every file of the base). No tokenizer: the base's is the one, and PEFT's Auto classes would resize the
base's embeddings to a tokenizer found in the adapter repo.

`export_adapter` writes one as `export` writes a full export (staged, verified, then moved into place);
`verify_adapter` checks it as `verify` checks a full export, on its base: the files, the manifests of both, the
adapter config and weights, the card, and in a fresh interpreter the base loaded with `trust_remote_code` plus
`PeftModel.from_pretrained` (and `AutoPeftModelForCausalLM` for causal LMs): zero warnings, empty loading info, the
outputs recorded at export. `load_adapter_model` reads one (or a LoRA run's Trainer checkpoint) strictly onto its base.

An adapter may be trained on another task class of the base's architecture than the one the base export holds: a
sequence classifier over a language-model export, its new head trained in full (`modules_to_save`). Then the base is
loaded as that class with the label settings (`num_labels`, `id2label`, `label2id`, recorded in the manifest and
shown in the card), which gives exactly this loading info: the new head's keys missing (the adapter holds them) and
the export's own head unexpected. That info, and transformers' report of it, is what verify expects; any other key,
or any other warning, fails the load as for a full export.
"""

import logging
import warnings
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import modeling

from hub_exports.folder_swap import check_export_target, move_into_place, recover_killed_exports, staging_folder
from hub_exports.manifest import MANIFEST, file_digest, read_json_object, read_manifest, write_manifest
from hub_exports.model_cards import CardInfo, build_model_card
from hub_exports.tokenizer_checks import tokenizer_problems
from hub_exports.verification import (ADAPTER_CONFIG, Check, VerificationError, _check_fresh_load, _check_manifest,
                                      _read_config, _run_check, format_report)

logger = logging.getLogger(__name__)
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


def load_adapter_model(folder, base=None):
    """The adapter in `folder` (an adapter repo, or a LoRA run's Trainer checkpoint) on its base export, both loaded
    strictly: the base with `load_checkpoint`, the adapter refusing missing and unexpected keys."""
    from peft import PeftModel, get_peft_model_state_dict

    base_folder = resolve_base_folder(folder, base)
    adapted = read_manifest(folder).get("adapter", {}).get("adapted", {})
    task_type = read_json_object(Path(folder) / ADAPTER_CONFIG).get("task_type")
    if not adapted and task_type == "SEQ_CLS" and not (Path(folder) / MANIFEST).is_file():
        raise ValueError(f"{folder} is a classification adapter without the manifest that records its labels (a "
                         "Trainer checkpoint): export it from the run's export/ instead")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(load_adapted_base(base_folder, adapted), str(folder))
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    stored = set(load_file(Path(folder) / ADAPTER_WEIGHTS))
    expected = set(get_peft_model_state_dict(model))
    if missing or stored != expected:
        raise ValueError(f"{folder} does not load cleanly onto {base_folder}: {missing or ''} unexpected "
                         f"{sorted(stored - expected)[:5]}, missing {sorted(expected - stored)[:5]}")
    setattr(model, BASE_FOLDER, str(base_folder))
    return model.eval()


def export_adapter(model, out_dir, card: Optional[CardInfo] = None, run_verify: bool = True) -> Path:
    """Write the PeftModel `model` as an adapter repo at `out_dir` (see the module docstring); returns its path. The
    probe is the base's tokenizer's; `out_dir` follows `export`'s rules (new, empty or an earlier export)."""
    from hub_exports.tokenizer_files import load_tokenizer

    target = check_export_target(out_dir)
    base = base_folder_of(model)
    tokenizer = load_tokenizer(base)
    problems = tokenizer_problems(model.config, tokenizer, type(model.get_base_model()).__name__)
    if problems:
        raise ValueError(f"The base's tokenizer does not fit the model: {'; '.join(problems)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_killed_exports(target)
    with staging_folder(target) as folder:
        folder.mkdir()
        # adapter config and weights, and PEFT's own card, replaced next; no full embedding layers (the base's are
        # never resized here), which PEFT would otherwise look the base up for, by Hub id too
        model.save_pretrained(folder, save_embedding_layers=False)
        build_model_card(model, card or CardInfo()).save(folder / "README.md")
        base_manifest = read_manifest(base)
        write_manifest(folder, model, tokenizer, extra={"adapter": {
            "base_model_name_or_path": base_name(model), "base_folder": str(base),
            "base_manifest_sha256": file_digest(base / MANIFEST),
            "base_hubzoo_version": base_manifest.get("hubzoo_version"), "peft_version": metadata.version("peft"),
            **adapted_class(model, base)}})
        if run_verify:
            logger.info("%s", format_report(target, verify_adapter(folder, reference_model=model, base=base)))
        check_export_target(target)
        move_into_place(folder, target)
    return target


def adapted_class(model, base_folder: Path) -> dict:
    """{"adapted": {class, kwargs, loading_info}} when `model` adapts another task class than the base export holds
    (module docstring), else {}."""
    adapted = model.get_base_model()
    saved = (read_json_object(base_folder / "config.json").get("architectures") or [None])[0]
    if type(adapted).__name__ == saved:
        return {}
    config = adapted.config
    kwargs = {"num_labels": config.num_labels, "id2label": {str(i): name for i, name in config.id2label.items()},
              "label2id": dict(config.label2id)} if "Classification" in type(adapted).__name__ else {}
    with safe_open(base_folder / "model.safetensors", framework="pt") as handle:
        stored = set(handle.keys())
    with torch.device("meta"):
        fresh = type(adapted)(config)
    tied = set(fresh.all_tied_weights_keys) if config.tie_word_embeddings else set()
    expected = set(fresh.state_dict()) - tied
    return {"adapted": {"class": type(adapted).__name__, "kwargs": kwargs, "loading_info": {
        "missing_keys": sorted(expected - stored), "unexpected_keys": sorted(stored - expected)}}}


def load_adapted_base(base_folder: Path, adapted: dict):
    """The base export loaded as the task class an adapter was trained on, giving exactly the recorded loading info."""
    from hub_exports.checkpoints import load_checkpoint

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


def merged_model(model):
    """The base class with the adapter folded into its weights (`merge_and_unload`), as a full export takes it."""
    merged = model.merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    return merged


def verify_adapter(folder, reference_model=None, python: Optional[str] = None, atol: Optional[float] = None,
                   base=None) -> list:
    """Every check of an adapter repo (module docstring); returns them or raises `VerificationError`."""
    import sys

    folder = Path(folder).resolve()
    manifest = read_manifest(folder)
    checks = [_run_check("files", _check_adapter_files, folder),
              _run_check("manifest", _check_manifest, folder, manifest)]
    try:
        base_folder = resolve_base_folder(folder, base)
    except ValueError as error:
        checks.append(Check("base", False, str(error)))
        raise VerificationError(format_report(folder, checks), checks) from None
    config = _read_config(base_folder)
    if isinstance(config, Check):
        checks.append(config)
    else:
        checks += [_run_check("base", _check_base, folder, manifest, base_folder),
                   _run_check("adapter config", _check_adapter_config, folder, manifest),
                   _run_check("adapter weights", _check_adapter_weights, folder),
                   _run_check("model card", _check_adapter_card, folder)]
    if all(check.ok for check in checks):
        checks += _check_fresh_load(base_folder, config, manifest, reference_model, python or sys.executable,
                                    1e-5 if atol is None else atol, adapter=folder,
                                    adapted=manifest.get("adapter", {}).get("adapted"))
    if not all(check.ok for check in checks):
        raise VerificationError(format_report(folder, checks), checks)
    return checks


def _check_adapter_files(folder: Path) -> Check:
    present = {path.name for path in folder.iterdir()}
    problems = [f"missing {sorted(ADAPTER_FILES - present)}"] if ADAPTER_FILES - present else []
    if present - ADAPTER_FILES:
        problems.append(f"files an adapter repo must not ship: {sorted(present - ADAPTER_FILES)}")
    return Check("files", not problems, "; ".join(problems) or f"{len(present)} files, nothing else")


def _check_base(folder: Path, manifest: dict, base_folder: Path) -> Check:
    """The base is the export the adapter was trained on (its manifest's sha256), and unchanged since (its files)."""
    recorded = manifest.get("adapter", {}).get("base_manifest_sha256")
    if not recorded:
        return Check("base", False, f"{MANIFEST} does not record the base; re-export the adapter")
    if file_digest(base_folder / MANIFEST) != recorded:
        return Check("base", False, f"{base_folder} is not the export this adapter was trained on (its {MANIFEST} "
                                    "differs from the one recorded at export)")
    base_files = _check_manifest(base_folder, read_manifest(base_folder))
    if not base_files.ok:
        return Check("base", False, f"{base_folder}: {base_files.detail}")
    return Check("base", True, f"{base_folder}, the export trained on ({base_files.detail})")


def _check_adapter_config(folder: Path, manifest: dict) -> Check:
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(folder)
    problems = [] if config.peft_type == "LORA" else [f"peft_type {config.peft_type}, hubzoo exports LoRA only"]
    named = manifest.get("adapter", {}).get("base_model_name_or_path")
    if config.base_model_name_or_path != named:
        problems.append(f"base_model_name_or_path {config.base_model_name_or_path!r}, recorded at export {named!r}")
    return Check("adapter config", not problems, "; ".join(problems) or
                 f"LoRA r {config.r} on {len(config.target_modules)} modules, base {config.base_model_name_or_path}")


def _check_adapter_weights(folder: Path) -> Check:
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    problems = [f"{key} has non-finite values" for key, tensor in tensors.items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if not tensors:
        problems.append("no tensors")
    return Check("adapter weights", not problems, "; ".join(problems) or f"{len(tensors)} tensors, all finite")


def _check_adapter_card(folder: Path) -> Check:
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    named = read_json_object(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    problems = [f"metadata lacks {key}" for key in ("library_name", "base_model", "tags") if not data.get(key)]
    if data.get("library_name") not in (None, "peft"):
        problems.append(f"library_name {data['library_name']!r}, not peft")
    if data.get("base_model") not in (None, named):
        problems.append(f"base_model {data['base_model']!r}, the adapter config names {named!r}")
    if "PeftModel.from_pretrained" not in card.text or "trust_remote_code=True" not in card.text:
        problems.append("no usage snippet with trust_remote_code=True and PeftModel.from_pretrained")
    return Check("model card", not problems, "; ".join(problems) or f"base_model {named}, library peft")


def refuse_local_base_on_push(folder) -> None:
    """An adapter repo whose config names its base by a local folder would not load for anyone else."""
    named = read_json_object(Path(folder) / ADAPTER_CONFIG).get("base_model_name_or_path") or ""
    if Path(named).is_absolute() or Path(named).exists():
        raise ValueError(f"the adapter names its base by the local folder {named}: push the base, then re-export the "
                         "adapter with its Hub id (peft.base_model in the run, or --base-model with "
                         "`python -m hub_exports export`)")


__all__ = ["export_adapter", "verify_adapter", "load_adapter_model", "merged_model", "is_peft_model",
           "is_adapter_folder", "resolve_base_folder", "refuse_local_base_on_push"]
