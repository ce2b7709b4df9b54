"""BD3-LM: configuration, models, and their Auto-class registration (this file is not exported to the Hub)."""

from .configuration_bd3lm import Bd3lmConfig
from .modeling_bd3lm import (
    Bd3lmForMaskedDiffusionLM,
    Bd3lmKVCache,
    Bd3lmModel,
    Bd3lmPreTrainedModel,
    block_diffusion_mask,
)

# The original Hub repos answer to AutoModelForMaskedLM; so does the hubzoo export.
AUTO_CLASSES = {
    "AutoModel": Bd3lmModel,
    "AutoModelForMaskedLM": Bd3lmForMaskedDiffusionLM,
}

__all__ = [
    "AUTO_CLASSES",
    "Bd3lmConfig",
    "Bd3lmPreTrainedModel",
    "Bd3lmModel",
    "Bd3lmForMaskedDiffusionLM",
    "Bd3lmKVCache",
    "block_diffusion_mask",
]
