"""What every converter shares: the error a foreign checkpoint that cannot be converted raises, reading an original
checkpoint's files safely (naming the file when it cannot be read), and the last check that the mapped tensors are
exactly the model's, with the model's shapes."""

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from hub_exports.inert_pickle import load_keeping_records


class ConversionError(ValueError):
    """This foreign checkpoint cannot be converted; the message names the file and the keys or fields at fault."""


def load_torch_file(path, refusal_hint: str = ""):
    """`torch.load(weights_only=True)` (no pickled code ever runs). A file holding other objects is refused for
    safety, naming the offending global (and adding `refusal_hint`: how to re-save such a file); a missing, unreadable
    or corrupt file is named."""
    return _read_torch_file(path, lambda source: torch.load(source, map_location="cpu", weights_only=True),
                            "the file holds objects other than tensors and plain containers", refusal_hint)


def load_torch_file_keeping_records(path, refusal_hint: str = ""):
    """Like `load_torch_file`, but objects of other classes are read as inert records (`hub_exports.inert_pickle`:
    still torch's weights-only unpickler, no pickled code runs). What even that refuses (a global of a module torch
    blocks, items of a dict or list subclass) is refused for safety the same way."""
    return _read_torch_file(path, load_keeping_records, "the file holds what torch never unpickles", refusal_hint)


def _read_torch_file(path, load, refusal: str, refusal_hint: str):
    path = _existing_file(path)
    try:
        return load(path)
    except pickle.UnpicklingError as error:
        raise ConversionError(f"{path} was refused for safety: {refusal} ({_offending_object(str(error))}); hubzoo "
                              "never unpickles code" + (f". {refusal_hint}" if refusal_hint else "")) from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
        raise ConversionError(f"{path} cannot be read as a torch checkpoint: {first_line(error)}") from None


def load_safetensors_file(path) -> dict:
    path = _existing_file(path)
    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: the file is damaged
        raise ConversionError(f"{path} cannot be read as a safetensors file: {first_line(error)}") from None


def read_json_config(path) -> dict:
    """A checkpoint's JSON config as a dict, or a ConversionError naming the file and the fault."""
    path = _existing_file(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} holds a JSON {type(config).__name__}, not an object of config fields")
    return config


def make_config(config_class, fields: dict, source: str):
    """`config_class(**fields)`; a field of the wrong type or out of range is a ConversionError naming `source`."""
    try:
        return config_class(**fields)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"{source} does not make a valid {config_class.__name__}: {error}") from None


def checkpoint_folder(folder) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    return folder


def load_folder_weights(folder) -> tuple:
    """(the weights file, its tensors) of a Hub-style folder: `model.safetensors`, else `pytorch_model.bin` read with
    `weights_only=True` (no code execution)."""
    folder = checkpoint_folder(folder)
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors", load_safetensors_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return folder / "pytorch_model.bin", load_torch_file(folder / "pytorch_model.bin")
    raise ConversionError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def check_complete(mapped: dict, target: dict, source: str) -> None:
    """Raise ConversionError naming the tensors the model needs and `source` (e.g. "the small-format checkpoint")
    lacks, those the architecture has no place for, then those of the wrong shape. (Keys no rule knows are refused
    earlier, by each converter's key table; a key a rule knows can still name, e.g., a block the config lacks.)"""
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ConversionError(f"{source} lacks tensors for {missing}")
    extra = sorted(set(mapped) - set(target))
    if extra:
        raise ConversionError(f"{source} has tensors the architecture has no place for: {extra}")
    wrong = [f"{key}: checkpoint {tuple(mapped[key].shape)}, model {tuple(target[key].shape)}"
             for key in target if mapped[key].shape != target[key].shape]
    if wrong:
        raise ConversionError(f"{source} has tensors with the wrong shape for the architecture: "
                              + "; ".join(wrong))


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} is a folder, not a file" if path.is_dir() else f"{path} does not exist")
    return path


def _offending_object(message: str) -> str:
    """What torch's weights-only unpickler refused, without its advice (which is to turn the safety off)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"the global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    return found.group(1).strip().rstrip(".") if found else "not a torch.save file of tensors"


def first_line(error: Exception) -> str:
    """An exception's message without the paragraphs of advice some libraries append."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
