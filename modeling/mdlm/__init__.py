"""MDLM: configuration, models, and their Auto-class registration (this file is not exported to the Hub)."""

from .configuration_mdlm import MdlmConfig
from .modeling_mdlm import (
    MdlmForMaskedDiffusionLM,
    MdlmModel,
    MdlmPreTrainedModel,
    masked_diffusion_nelbo,
    subs_log_probs,
)

# The original Hub repo answers to AutoModelForMaskedLM; so does the hubzoo export.
AUTO_CLASSES = {
    "AutoModel": MdlmModel,
    "AutoModelForMaskedLM": MdlmForMaskedDiffusionLM,
}

__all__ = [
    "AUTO_CLASSES",
    "MdlmConfig",
    "MdlmPreTrainedModel",
    "MdlmModel",
    "MdlmForMaskedDiffusionLM",
    "masked_diffusion_nelbo",
    "subs_log_probs",
]
