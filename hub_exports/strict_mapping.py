"""What every converter shares: reading an original Hub folder's weights safely, and the last check that the mapped
tensors are exactly the model's, with the model's shapes."""

from pathlib import Path

import torch
from safetensors.torch import load_file


def load_folder_weights(folder) -> dict:
    """The tensors of a Hub-style folder: `model.safetensors`, else `pytorch_model.bin` read with `weights_only=True`
    (no code execution)."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")



def check_complete(mapped: dict, target: dict, source: str) -> None:
    """Raise ValueError naming the tensors the model needs and the checkpoint lacks, then those of the wrong shape.
    (Unknown checkpoint keys are refused earlier, by each converter's key table.)"""
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"the {source} checkpoint lacks tensors for {missing}")
    wrong = [f"{key}: checkpoint {tuple(mapped[key].shape)}, model {tuple(target[key].shape)}"
             for key in target if mapped[key].shape != target[key].shape]
    if wrong:
        raise ValueError("tensors with the wrong shape for the architecture: " + "; ".join(wrong))
