"""modded-nanogpt GPT: configuration, models, and their Auto-class registration (this file is not exported)."""

from .configuration_modded_gpt import ModdedGptConfig
from .modeling_modded_gpt import (
    ModdedGptForCausalLM,
    ModdedGptForSequenceClassification,
    ModdedGptModel,
    ModdedGptPreTrainedModel,
)

AUTO_CLASSES = {
    "AutoModel": ModdedGptModel,
    "AutoModelForCausalLM": ModdedGptForCausalLM,
    "AutoModelForSequenceClassification": ModdedGptForSequenceClassification,
}

__all__ = [
    "AUTO_CLASSES",
    "ModdedGptConfig",
    "ModdedGptPreTrainedModel",
    "ModdedGptModel",
    "ModdedGptForCausalLM",
    "ModdedGptForSequenceClassification",
]
