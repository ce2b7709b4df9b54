"""Backpack LMs: configuration, models, and their Auto-class registration (this file is not exported)."""

from .configuration_backpack import BackpackConfig
from .modeling_backpack import BackpackForCausalLM, BackpackModel, BackpackPreTrainedModel

AUTO_CLASSES = {
    "AutoModel": BackpackModel,
    "AutoModelForCausalLM": BackpackForCausalLM,
}

__all__ = ["AUTO_CLASSES", "BackpackConfig", "BackpackPreTrainedModel", "BackpackModel", "BackpackForCausalLM"]
