"""Backpack conformance declaration: the whole mixin on tiny configs of both sense networks."""

from modeling.backpack import BackpackConfig, BackpackForCausalLM, BackpackModel
from tests.modeling_common import ModelTesterMixin


class TestBackpackStanford(ModelTesterMixin):
    config_class = BackpackConfig
    model_classes = (BackpackModel, BackpackForCausalLM)
    is_causal = True
    sense_network = "stanford"

    def get_config(self, **overrides):
        defaults = dict(vocab_size=99, pad_token_id=0, hidden_size=32, num_senses=4, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=48, sense_intermediate_size=40,
                        max_position_embeddings=24, sense_network=self.sense_network)
        return BackpackConfig(**{**defaults, **overrides})

    def get_labels(self, model_class, config, inputs, generator):
        if model_class is BackpackForCausalLM:
            return inputs["input_ids"].clone()
        return super().get_labels(model_class, config, inputs, generator)

    def invalid_config_overrides(self):
        return [{"sense_network": "levanter"}, {"num_senses": 5}, {"num_attention_heads": 5},
                {"hidden_act": "relu"}, {"num_hidden_layers": 0}, {"dropout": 1.0}]


class TestBackpackNano(TestBackpackStanford):
    sense_network = "nano"

    def get_config(self, **overrides):
        return super().get_config(**{"use_bias": False, "sense_weight_bias": False, "scale_sense_weights": False,
                                     "scale_attn_by_inverse_layer_idx": False, **overrides})
