"""LTG-BERT conformance declaration: the whole mixin runs on a tiny config, every head included."""

from modeling.ltg_bert import (
    LtgBertConfig,
    LtgBertForMaskedLM,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
)
from tests.modeling_common import ModelTesterMixin


class TestLtgBert(ModelTesterMixin):
    config_class = LtgBertConfig
    model_classes = (LtgBertModel, LtgBertForMaskedLM, LtgBertForSequenceClassification, LtgBertForTokenClassification)

    def get_config(self, **overrides):
        # Distinct sizes so a transposed or mis-broadcast dimension fails loudly; bucket 4 with T=7 exercises
        # both the exact and the log-spaced relative buckets.
        defaults = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=24, position_bucket_size=4, num_labels=3,
                        pad_token_id=0)
        return LtgBertConfig(**{**defaults, **overrides})

    def invalid_config_overrides(self):
        return [{"hidden_size": 30}, {"position_qk_split": "rows"}, {"position_bucket_size": 64}]
