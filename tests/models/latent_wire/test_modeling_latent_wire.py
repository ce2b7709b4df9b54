"""LatentWire conformance declaration: the whole mixin on the wire alone (encoder, latent queries, two adapters);
the frozen decoders are never part of the model (tests in test_latent_wire_decoders.py)."""

import torch

from modeling.latent_wire import LatentWireConfig, LatentWireModel, byte_tokenizer
from tests.modeling_common import ModelTesterMixin

DECODERS = [{"name": "llama", "hidden_size": 24}, {"name": "qwen", "hidden_size": 40}]


class TestLatentWire(ModelTesterMixin):
    config_class = LatentWireConfig
    model_classes = (LatentWireModel,)

    def get_config(self, **overrides):
        defaults = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        num_latents=4, max_position_embeddings=64, decoders=DECODERS)
        return LatentWireConfig(**{**defaults, **overrides})

    def export_tokenizer(self, config):
        return byte_tokenizer(config.max_position_embeddings)

    def expected_shape(self, model_class, config, batch, seq_len):
        return (batch, config.num_latents, config.hidden_size)  # M latents whatever the byte count

    def training_loss(self, model, model_class, seed):
        # A surrogate over the latents and every adapter's prefix, so that the adapters' parameters are checked too.
        outputs = model(**self.get_inputs(model.config, generator=torch.Generator().manual_seed(seed)))
        return outputs.last_hidden_state.pow(2).mean() + sum(prefix.pow(3).mean() for prefix in outputs.prefixes)

    def invalid_config_overrides(self):
        return [{"vocab_size": 256}, {"pad_token_id": 0}, {"num_attention_heads": 5}, {"num_latents": 0},
                {"dropout": 1.0}, {"decoders": [{"name": "a", "hidden_size": 8}, {"name": "a", "hidden_size": 9}]},
                {"decoders": [{"name": "a"}]}, {"decoders": [{"name": "a-b", "hidden_size": 8}]},
                {"decoders": [{"name": "a", "hidden_size": 8, "anchor": "x"}]}]


def test_bytes_start_at_the_scale_of_their_positions():
    # Sinusoidal positions have unit scale; byte embeddings at the usual 0.02 would be drowned by them (the wire then
    # learned far more slowly: a CPU trial reached latent EM 13 instead of 34 with the same budget).
    torch.manual_seed(0)
    wire = LatentWireModel(TestLatentWire().get_config(hidden_size=64, num_attention_heads=4))
    assert 0.9 < wire.embed_bytes.weight.std().item() < 1.1
    assert wire.layers[0].attention.q_proj.weight.std().item() < 0.03
