"""Write a trained hubzoo model as a complete, verified `trust_remote_code` Hub repo folder.

The folder holds: `config.json` with the full `auto_map`, the configuration/modeling files copied from `modeling/`
(the files the model was trained with), `model.safetensors`, the tokenizer, a model card (`README.md`,
`model_cards.py`) and `hubzoo_export.json` (the sha256 of every other file, plus probe inputs and the outputs the
exported model gave on them: `manifest.py`). Everything is written into a staging folder next to the target and
verified there; only a folder that passes replaces the target, and an existing export survives any failure or kill
(`folder_swap.py`).
"""

import json
import logging
from pathlib import Path
from typing import Optional

import modeling
from hub_exports.adapter_files import is_peft_model
from hub_exports.adapters import export_adapter
from hub_exports.folder_swap import check_export_target, write_then_swap
from hub_exports.manifest import write_manifest
from hub_exports.model_cards import CardInfo, build_model_card
from hub_exports.tokenizer_checks import tokenizer_problems
from hub_exports.verification import format_report, verify

logger = logging.getLogger(__name__)


def export(model, tokenizer, out_dir, card: Optional[CardInfo] = None, run_verify: bool = True) -> Path:
    """Write `model` + `tokenizer` as a Hub-ready folder at `out_dir`. Returns its path.

    `out_dir` must be new, empty or an earlier export (see `check_export_target`). With `run_verify` (the default)
    the staged folder must pass `verify` against the in-memory model before it replaces `out_dir`; otherwise
    `VerificationError` is raised and `out_dir` is left as it was. A PEFT model is written as an adapter repo over
    its base export (`hub_exports.adapters.export_adapter`; `tokenizer` is then unused).
    """
    if is_peft_model(model):  # a LoRA run: an adapter repo over its base export, whose tokenizer is the one
        return export_adapter(model, out_dir, card=card, run_verify=run_verify)
    target = check_export_target(out_dir)
    problems = tokenizer_problems(model.config, tokenizer, type(model).__name__)
    if problems:
        raise ValueError(f"Tokenizer does not fit the model: {'; '.join(problems)}")

    def write(folder: Path) -> None:
        model.config.auto_map = modeling.auto_map(model.config.model_type)  # every task class, not just this one
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _write_portable_tokenizer_config(folder / "tokenizer_config.json", model)
        build_model_card(model, card or CardInfo()).save(folder / "README.md")
        write_manifest(folder, model, tokenizer)
        if run_verify:
            logger.info("%s", format_report(target, verify(folder, reference_model=model)))

    write_then_swap(target, write)
    return target


def _write_portable_tokenizer_config(tokenizer_config: Path, model) -> None:
    """Pin what transformers 4.x and 5.x would otherwise read differently from the same tokenizer files."""
    settings = json.loads(tokenizer_config.read_text())
    # 5.x calls a plain fast tokenizer `TokenizersBackend`, which 4.x cannot resolve; both know this name.
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    # 4.x fast tokenizers default to emitting token_type_ids, which the models' forward() does not take.
    settings["model_input_names"] = ["input_ids", "attention_mask"]
    # `truncation=True` should cut at the model's limit instead of tripping its length check.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and settings.get("model_max_length", float("inf")) > limit:
        settings["model_max_length"] = limit
    tokenizer_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
