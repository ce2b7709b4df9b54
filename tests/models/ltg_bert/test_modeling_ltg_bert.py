"""LTG-BERT conformance declaration: the whole mixin runs on a tiny config, every head included."""

import torch

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

    def test_both_position_splits_are_distinct_models(self):
        torch.manual_seed(0)
        model = LtgBertForMaskedLM(self.get_config()).eval()
        inputs = self.get_inputs(model.config)
        other = LtgBertForMaskedLM(self.get_config(position_qk_split="per_head_interleaved")).eval()
        other.load_state_dict(model.state_dict())
        assert not torch.allclose(model(**inputs).logits, other(**inputs).logits, atol=1e-3)

    def test_hidden_states_are_cumulative(self):
        model = self.build(LtgBertModel)
        outputs = model(**self.get_inputs(model.config), output_hidden_states=True)
        torch.testing.assert_close(outputs.hidden_states[-1], outputs.last_hidden_state, atol=0, rtol=0)
