"""LoRA fine-tuning in the run scripts: the `peft` setting of the training arguments, checked before any work and
turned into a PEFT model of the loaded checkpoint (`peft.get_peft_model`).

    peft: {type: lora, r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear, modules_to_save: [score]}

in the YAML, or `--peft '{"type": "lora", "r": 8}'` as a flag. Every key but `type` has the default shown, except
`modules_to_save` (none; a run adds the modules it creates itself, e.g. a new classification head) and `base_model`
(the Hub id under which the base export is published, named in the adapter repo instead of its local folder).
LoRA fine-tunes a trained model: the base is the run's `init_from` (or the classifier's `model_name_or_path`), which
must be a hubzoo export, because the adapter repo names it as the model to load first. The run then trains the
adapter (and `modules_to_save` in full), and its exports are adapter repos (`hub_exports/adapters.py`).
"""

import json
import logging
import re
from pathlib import Path
from typing import Optional

import modeling
from hub_exports.adapter_files import BASE_FOLDER, check_hub_id
from hub_exports.manifest import MANIFEST

logger = logging.getLogger(__name__)

LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "modules_to_save": [],
                 "bias": "none", "use_rslora": False, "base_model": None}
PEFT_TYPES = ("lora",)
ALL_LINEAR = "all-linear"


def check_peft_spec(spec: dict) -> dict:
    """The `peft` setting with its defaults filled in; a ValueError naming the key for anything that is not a LoRA
    setting of the right type (a misspelt key would otherwise train with the default silently)."""
    if not isinstance(spec, dict):
        raise ValueError(f"peft must be a mapping such as {{type: lora, r: 8}}, got {spec!r}")
    if spec.get("type") not in PEFT_TYPES:
        raise ValueError(f"peft.type must be one of {list(PEFT_TYPES)}, got {spec.get('type')!r}")
    unknown = sorted(set(spec) - set(LORA_DEFAULTS) - {"type"})
    if unknown:
        raise ValueError(f"peft: unknown key(s) {unknown}; a LoRA setting takes {sorted(LORA_DEFAULTS)}")
    full = {**LORA_DEFAULTS, **spec}
    if not isinstance(full["r"], int) or isinstance(full["r"], bool) or full["r"] < 1:
        raise ValueError(f"peft.r must be a positive integer, got {full['r']!r}")
    if not isinstance(full["alpha"], (int, float)) or isinstance(full["alpha"], bool) or full["alpha"] <= 0:
        raise ValueError(f"peft.alpha must be a positive number, got {full['alpha']!r}")
    if not isinstance(full["dropout"], (int, float)) or not 0 <= full["dropout"] < 1:
        raise ValueError(f"peft.dropout must lie in [0, 1), got {full['dropout']!r}")
    targets = full["target_modules"]
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(name, str) and name for name in targets)):
        raise ValueError(f"peft.target_modules must be '{ALL_LINEAR}', a regular expression or a non-empty list of "
                         f"module names, got {targets!r}")
    saved = full["modules_to_save"]
    if not isinstance(saved, list) or not all(isinstance(name, str) and name for name in saved):
        raise ValueError(f"peft.modules_to_save must be a list of module names, got {saved!r}")
    if full["bias"] not in ("none", "all", "lora_only"):
        raise ValueError(f"peft.bias must be 'none', 'all' or 'lora_only', got {full['bias']!r}")
    if not isinstance(full["use_rslora"], bool):
        raise ValueError(f"peft.use_rslora must be true or false, got {full['use_rslora']!r}")
    if full["base_model"] is not None:
        check_hub_id(full["base_model"], "peft.base_model")
    return full



def check_peft_base(spec: dict, base: Optional[str], flag: str = "init_from", output_dir: Optional[str] = None,
                    tokenizer_name: Optional[str] = None) -> None:
    """A LoRA run needs a base that an adapter repo can name: a hubzoo export folder outside the run's `output_dir`
    (whose exports and checkpoint rotation would replace or delete it), used with its own tokenizer (the adapter
    repo ships none). Checked before any work."""
    if base and (Path(base) / "adapter_config.json").is_file():
        raise ValueError(f"{flag} {base} is an adapter repo, not a model: fold it into its base first (python -m "
                         "hub_exports export --model ADAPTER --merge --out FOLDER) and start from that export")
    if not spec:
        return
    if not base:
        raise ValueError(f"peft fine-tunes a trained model: give {flag} (a hubzoo export folder), not a new model")
    if not (Path(base) / MANIFEST).is_file():
        raise ValueError(f"peft: {flag} {base} is not a hubzoo export (no {MANIFEST}); the adapter repo names its "
                         "base as the model a user loads first, so the base must be an export (e.g. a run's export/ "
                         "or a checkpoint's checkpoint-N/export)")
    if output_dir and Path(output_dir).resolve() in [Path(base).resolve(), *Path(base).resolve().parents]:
        raise ValueError(f"peft: {flag} {base} lies inside output_dir {output_dir}, whose export and checkpoints "
                         "would replace or rotate it away: copy the base elsewhere or choose another output_dir")
    if tokenizer_name:
        raise ValueError(f"peft: tokenizer_name {tokenizer_name} with a base export: an adapter is used with its "
                         f"base's tokenizer ({flag}'s), which the run takes by itself")


def matching_modules(model, pattern) -> list:
    """The names of `model`'s modules that PEFT's `target_modules` entry `pattern` selects: a full name or a dotted
    suffix for a name in a list, a full match for a regular expression."""
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(pattern, list):
        return [name for name in names if any(name == entry or name.endswith("." + entry) for entry in pattern)]
    return [name for name in names if re.fullmatch(pattern, name)]


def linear_suffixes(model) -> list:
    """The distinct last components of the names of `model`'s linear layers (what a user names in target_modules)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def all_linear_targets(model, modules_to_save) -> list:
    """The full names of `model`'s linear layers but the output embedding and the layers inside `modules_to_save`
    (trained in full; PEFT's own all-linear leaves out only a head module of a conventional name, not the layers in
    it, e.g. LTG-BERT's classifier.dense)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    saved = matching_modules(model, list(modules_to_save)) if modules_to_save else []
    return sorted(name for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear) and module is not output
                  and not any(name == top or name.startswith(top + ".") for top in saved))


def check_targets(model, spec: dict, modules_to_save) -> None:
    """Every entry of `target_modules` and of `modules_to_save` must select a module of `model`: PEFT itself refuses
    only a list none of whose entries matches, so a misspelt one would silently leave its layers untrained."""
    targets = spec["target_modules"]
    what = type(model).__name__
    if targets == ALL_LINEAR:
        if not linear_suffixes(model):
            raise ValueError(f"peft.target_modules {ALL_LINEAR}: {what} has no linear layer")
        return
    entries = targets if isinstance(targets, list) else [targets]
    unmatched = [entry for entry in entries
                 if not matching_modules(model, [entry] if isinstance(targets, list) else entry)]
    if unmatched:
        raise ValueError(f"peft.target_modules {unmatched} match no module of {what}; its linear layers are named "
                         f"{linear_suffixes(model)} (or use '{ALL_LINEAR}')")
    missing = [name for name in modules_to_save if not matching_modules(model, [name])]
    if missing:
        raise ValueError(f"peft.modules_to_save {missing} match no module of {what}")


# PEFT's task type of a model loaded with each Auto class: its task wrapper, and the class of PEFT's one-call loader
# (AutoPeftModelForCausalLM, ...); masked LMs have none
PEFT_TASK_TYPES = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForSequenceClassification": "SEQ_CLS",
                   "AutoModelForTokenClassification": "TOKEN_CLS"}


def with_peft(model, spec: dict, base: str, extra_modules_to_save=()):
    """`model` (loaded from the export `base`) wrapped for LoRA training as `spec` says, or `model` itself when
    `spec` is empty. `extra_modules_to_save`: modules the run created (a new head), always trained in full. The PEFT
    task type follows from the model's class."""
    if not spec:
        return model
    from peft import LoraConfig, get_peft_model  # here: importing peft costs a second, and most runs do not use it

    auto_class, _ = modeling.task_class(model.config.model_type, type(model).__name__)
    task_type = PEFT_TASK_TYPES.get(auto_class)
    spec = check_peft_spec(spec)
    modules_to_save = list(dict.fromkeys([*spec["modules_to_save"], *extra_modules_to_save]))
    check_targets(model, spec, modules_to_save)
    targets = spec["target_modules"]
    if targets == ALL_LINEAR:
        targets = all_linear_targets(model, modules_to_save)
    config = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"],
                        target_modules=targets, modules_to_save=list(modules_to_save) or None,
                        bias=spec["bias"], use_rslora=spec["use_rslora"], task_type=task_type)
    wrapped = get_peft_model(model, config)
    # get_peft_model names the base by the path it was loaded from, maybe relative: the adapter repo names it by its
    # Hub id, or by its absolute folder, which the export also reads it from
    folder = str(Path(base).resolve())
    wrapped.peft_config["default"].base_model_name_or_path = spec["base_model"] or folder
    setattr(wrapped, BASE_FOLDER, folder)
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%s on %d modules of %s%s: %s of %s parameters trainable (%.2f%%)", spec["r"],
                spec["alpha"], len(wrapped.peft_config["default"].target_modules), type(model).__name__,
                f", {modules_to_save} in full" if modules_to_save else "", f"{trainable:,}", f"{total:,}",
                100 * trainable / total)
    return wrapped


def adapter_card(card, spec: dict, base: str):
    """`card` (a run's CardInfo) describing a LoRA fine-tune of the export `base` instead of the model itself."""
    if spec:
        card.description = (f"A LoRA adapter (r {spec.get('r', LORA_DEFAULTS['r'])}) fine-tuned by hubzoo on the "
                            f"export {spec.get('base_model') or base}: {card.description}")
    return card


# The LoRA settings a resumed run must share with the checkpoint it resumes (Trainer's resume loads the adapter
# weights without checking them)
RESUMED_SETTINGS = ("base_model_name_or_path", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save",
                    "bias", "use_rslora", "task_type")


def check_resumed_adapter(model, checkpoint) -> None:
    """Refuse to resume the PEFT model `model` from a `checkpoint` saved with other LoRA settings or another base:
    the run would continue another adapter, silently."""
    saved = json.loads((Path(checkpoint) / "adapter_config.json").read_text())
    current = model.peft_config[model.active_adapter].to_dict()

    def comparable(value):
        return sorted(value) if isinstance(value, (list, set, tuple)) else value

    differ = {name: (saved.get(name), current.get(name)) for name in RESUMED_SETTINGS
              if comparable(saved.get(name)) != comparable(current.get(name))}
    if differ:
        raise ValueError(f"{checkpoint} was saved with other LoRA settings than this run's (checkpoint, run): "
                         f"{differ}; resume with the settings and init_from it was trained with")

