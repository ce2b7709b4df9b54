"""Adapter repos: the export of a LoRA run (`trainers/adapters.py`) is a PEFT adapter over a hubzoo base export.

An adapter repo holds `adapter_config.json` (its `base_model_name_or_path` names the base: a Hub id, or the base
export's folder), `adapter_model.safetensors`, the model card (`library_name: peft`, `base_model`) and the manifest
(`hubzoo_export.json`: file hashes, the probe and the adapted model's outputs on it, like a full export's, plus the
base it was trained on: its name, its folder at export time and the sha256 of the base's own manifest, which
fingerprints every file of the base). No tokenizer: the base's is the one, and PEFT's Auto classes would resize the
base's embeddings to a tokenizer found in the adapter repo.

`export_adapter` (here) writes one as `export` writes a full export (staged, verified, then moved into place);
`verification.verify_adapter` checks it as `verify` checks a full export, on its base: the files, the manifests of
both, the adapter config and weights, the card, and in a fresh interpreter the base loaded with `trust_remote_code`
plus `PeftModel.from_pretrained` (and `AutoPeftModelForCausalLM` for causal LMs): zero warnings, empty loading info,
the outputs recorded at export. `checkpoints.load_adapter_model` reads one (or a LoRA run's Trainer checkpoint)
strictly onto its base; `adapter_files` names the files and finds the base.

An adapter may be trained on another task class of the base's architecture than the one the base export holds: a
sequence classifier over a language-model export, its new head trained in full (`modules_to_save`). Then the base is
loaded as that class with the label settings (`num_labels`, `id2label`, `label2id`, recorded in the manifest and
shown in the card), which gives exactly this loading info: the new head's keys missing (the adapter holds them) and
the export's own head unexpected. That info, and transformers' report of it, is what verify expects; any other key,
or any other warning, fails the load as for a full export.
"""

import logging
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from hub_exports.adapter_files import ADAPTER_CONFIG, base_folder_of, base_name
from hub_exports.folder_swap import check_export_target, write_then_swap
from hub_exports.manifest import MANIFEST, file_digest, read_json_object, read_manifest, write_manifest
from hub_exports.model_cards import CardInfo, build_model_card
from hub_exports.tokenizer_checks import tokenizer_problems
from hub_exports.tokenizer_files import load_tokenizer
from hub_exports.verification import format_report, verify_adapter

logger = logging.getLogger(__name__)


def export_adapter(model, out_dir, card: Optional[CardInfo] = None, run_verify: bool = True) -> Path:
    """Write the PeftModel `model` as an adapter repo at `out_dir` (see the module docstring); returns its path. The
    probe is the base's tokenizer's; `out_dir` follows `export`'s rules (new, empty or an earlier export)."""
    base = base_folder_of(model)
    target = check_export_target(out_dir, sources=[base])  # the base must survive its adapter's export
    tokenizer = load_tokenizer(base)
    problems = tokenizer_problems(model.config, tokenizer, type(model.get_base_model()).__name__)
    if problems:
        raise ValueError(f"The base's tokenizer does not fit the model: {'; '.join(problems)}")

    def write(folder: Path) -> None:
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

    write_then_swap(target, write, sources=[base])
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


def merged_model(model):
    """The base class with the adapter folded into its weights (`merge_and_unload`), as a full export takes it."""
    merged = model.merge_and_unload()
    merged.config.architectures = [type(merged).__name__]
    return merged


def refuse_local_base_on_push(folder) -> None:
    """An adapter repo whose config names its base by a local folder would not load for anyone else."""
    named = read_json_object(Path(folder) / ADAPTER_CONFIG).get("base_model_name_or_path") or ""
    if Path(named).is_absolute() or Path(named).exists():
        raise ValueError(f"the adapter names its base by the local folder {named}: push the base, then re-export the "
                         "adapter with its Hub id (peft.base_model in the run, or --base-model with "
                         "`python -m hub_exports export`)")


__all__ = ["export_adapter", "merged_model", "adapted_class", "refuse_local_base_on_push"]
