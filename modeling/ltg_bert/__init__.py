"""LTG-BERT: configuration, models, and their Auto-class registration (this file is not exported to the Hub)."""

from .configuration_ltg_bert import LtgBertConfig
from .modeling_ltg_bert import (
    LtgBertForMaskedLM,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
    LtgBertPreTrainedModel,
)

# Every Auto class an exported LTG-BERT repo answers to; `hub_exports.export` writes all of them into `auto_map`.
AUTO_CLASSES = {
    "AutoModel": LtgBertModel,
    "AutoModelForMaskedLM": LtgBertForMaskedLM,
    "AutoModelForSequenceClassification": LtgBertForSequenceClassification,
    "AutoModelForTokenClassification": LtgBertForTokenClassification,
}

__all__ = [
    "AUTO_CLASSES",
    "LtgBertConfig",
    "LtgBertPreTrainedModel",
    "LtgBertModel",
    "LtgBertForMaskedLM",
    "LtgBertForSequenceClassification",
    "LtgBertForTokenClassification",
]
