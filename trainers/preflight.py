"""Checks a run makes before it trains: the model it was asked for is the one it builds, and nothing that the end of
the run needs (the export, its card, the evaluation data) can fail after the training has been paid for."""

import difflib
import inspect
import json
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from transformers import PretrainedConfig

import modeling
from hub_exports.checkpoints import load_checkpoint
from hub_exports.folder_swap import check_export_target
from hub_exports.model_cards import CardInfo, build_model_card
from hub_exports.tokenizer_checks import tokenizer_problems


def known_config_keys(config_class) -> set:
    """The fields `config_class` takes: its own `__init__` parameters and the attributes PretrainedConfig documents.
    Anything else would be stored as an attribute nobody reads, and exported as if it meant something."""
    def parameters(function):
        return {name for name, parameter in inspect.signature(function).parameters.items()
                if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)} - {"self"}

    documented = set(re.findall(r"^\s+(\w+) \(`", PretrainedConfig.__doc__ or "", re.MULTILINE))
    return parameters(config_class.__init__) | parameters(PretrainedConfig.__init__) | documented


def check_overrides(overrides: dict, config_class, required=(), set_by_run=(), flag: str = "config_overrides",
                    init_from: Optional[str] = None, can_init_from: bool = False) -> None:
    """Refuse overrides that would silently train another model than the one asked for: an unknown (misspelt) key, a
    field the run sets itself (from the tokenizer or the data), a new model whose size is left to the class defaults
    (every field in `required` must be stated), or, with `init_from`, a change to the checkpoint's weights."""
    unknown = sorted(set(overrides) - known_config_keys(config_class) - set(set_by_run))
    if unknown:
        known = sorted(known_config_keys(config_class))
        hints = [f"{key!r}" + "".join(f" (did you mean {close!r}?)"
                                      for close in difflib.get_close_matches(key, known, n=1)) for key in unknown]
        raise ValueError(f"{flag}: unknown {config_class.__name__} field(s) {', '.join(hints)}")
    fixed = sorted(set(overrides) & set(set_by_run))
    if fixed:
        raise ValueError(f"{flag} may not set {fixed}: the run sets them from the tokenizer and the data")
    if init_from:
        check_weights_unchanged(init_from, overrides, flag)
        return
    missing = [name for name in required if name not in overrides]
    if missing:
        raise ValueError(f"{flag} must state {missing} for a new {config_class.model_type} model"
                         + (" (or give init_from)" if can_init_from else "")
                         + ": its size is never taken from the class defaults")


def check_weights_unchanged(init_from, overrides: dict, flag: str) -> None:
    """With `init_from`, overrides may change how the checkpoint runs (e.g. BD3-LM's block_size), not what its weights
    are: a model trained under a config that no longer describes its tensors fails to load at the export. Both models
    are built on the meta device (no memory, no weights read) and their parameter names and shapes compared."""
    config_file = Path(init_from) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"init_from {init_from}: no config.json there (not a hubzoo export or checkpoint folder)")
    if not overrides:
        return
    saved = json.loads(config_file.read_text())
    _, model_class = modeling.task_class(saved.get("model_type"), (saved.get("architectures") or [None])[0])

    def shapes(config_dict) -> dict:
        with torch.device("meta"):
            model = model_class(model_class.config_class.from_dict(config_dict))
        return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}

    before, after = shapes(saved), shapes({**saved, **overrides})
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    if changed:
        raise ValueError(f"{flag} {sorted(overrides)} would change the weights of init_from {init_from} "
                         f"({len(changed)} tensors, e.g. {changed[:3]}): with init_from, overrides may only change "
                         "settings that keep every weight's name and shape")


def load_init_from(folder, model_class, tokenizer, max_seq_length: int):
    """The checkpoint `folder` loaded strictly, refused unless it is a `model_class` that fits `tokenizer` and takes
    rows of `max_seq_length` tokens (a run continuing it must train what it was)."""
    model = load_checkpoint(folder)  # strict: refuses missing/unexpected keys
    if not isinstance(model, model_class):
        raise ValueError(f"init_from holds a {type(model).__name__}; the run continues a {model_class.__name__}")
    problems = tokenizer_problems(model.config, tokenizer, type(model).__name__)
    if problems:
        raise ValueError(f"init_from does not fit the tokenizer ({'; '.join(problems)}): pass its tokenizer")
    if max_seq_length > model.config.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds init_from's max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    return model


def check_before_training(output_dir, inputs=(), model=None, tokenizer=None, card: Optional[CardInfo] = None) -> None:
    """Everything the end of a run needs that can be checked before it trains, so that a run never fails after all
    its training: the files read at the end (`inputs`), a writable `output_dir`, and, for a run ending in a hubzoo
    export of `model` (`card` given), an `output_dir/export` that the export may replace, the installed package (the
    card and manifest record its version), the card itself and a tokenizer that fits the model. Every problem found
    is named in one ValueError."""
    problems = [f"{path} does not exist" for path in inputs if path and not Path(path).exists()]
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as error:
        problems.append(f"output_dir {output_dir} is not writable ({error})")
    if card is not None:
        try:
            check_export_target(Path(output_dir) / "export")
        except ValueError as error:
            problems.append(str(error))
        problems += [f"the tokenizer does not fit the model: {problem}"
                     for problem in tokenizer_problems(model.config, tokenizer, type(model).__name__)]
        try:
            metadata.version("hubzoo")
        except metadata.PackageNotFoundError:
            problems.append("the hubzoo package is not installed (the export records its version): run "
                            "`pip install -e .` in the checkout")
        else:
            try:
                build_model_card(model, card)
            except (OSError, ValueError, KeyError) as error:
                problems.append(f"the model card cannot be written: {error!r}")
    if problems:
        raise ValueError("the run would fail after training:\n  - " + "\n  - ".join(problems))
