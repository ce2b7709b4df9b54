"""LatentWire: configuration, the wire model, its byte tokenizer, and Auto-class registration (not exported)."""

from .configuration_latent_wire import LatentWireConfig
from .modeling_latent_wire import LatentWireModel, LatentWireOutput, LatentWirePreTrainedModel
from .tokenization_bytes import byte_tokenizer

AUTO_CLASSES = {"AutoModel": LatentWireModel}

__all__ = ["AUTO_CLASSES", "LatentWireConfig", "LatentWireModel", "LatentWireOutput", "LatentWirePreTrainedModel",
           "byte_tokenizer"]
