"""modded-nanogpt GPT conformance declaration: the whole mixin on a tiny config, all three classes."""

import torch

from modeling.modded_gpt import (
    ModdedGptConfig,
    ModdedGptForCausalLM,
    ModdedGptForSequenceClassification,
    ModdedGptModel,
)
from tests.modeling_common import ModelTesterMixin

# Real vocabulary 90 in 128 padded rows; EOT 89 separates documents; 12 blocks as the small track (block 7 without
# attention, value embeddings, U-net skips); 8-token window blocks so that the windows bind at these lengths.
TINY = dict(vocab_size=128, tokenizer_vocab_size=90, eot_token_id=89, pad_token_id=0, hidden_size=32,
            num_hidden_layers=12, num_attention_heads=2, head_dim=16, intermediate_size=48,
            max_position_embeddings=24, sliding_window_num_blocks=2, window_block_size=4, num_labels=3)


class TestModdedGpt(ModelTesterMixin):
    config_class = ModdedGptConfig
    model_classes = (ModdedGptModel, ModdedGptForCausalLM, ModdedGptForSequenceClassification)
    is_causal = True

    def get_config(self, **overrides):
        # The original zero-initialises the output projections and head, which zeroes every gradient below them at
        # init: the mixin's one-step test needs the gradients (the default is tested in test_modded_gpt_behaviour).
        return ModdedGptConfig(**{**TINY, "zero_init_projections": False, **overrides})

    def get_inputs(self, config, batch_size=3, seq_len=7, generator=None):
        generator = generator or torch.Generator().manual_seed(0)
        input_ids = torch.randint(1, config.tokenizer_vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def get_labels(self, model_class, config, inputs, generator):
        if model_class is ModdedGptForCausalLM:
            return inputs["input_ids"].clone()
        return super().get_labels(model_class, config, inputs, generator)

    def invalid_config_overrides(self):
        return [{"head_dim": 15, "hidden_size": 30}, {"tokenizer_vocab_size": 129}, {"eot_token_id": 95},
                {"rotary_convention": "interleaved"}, {"logit_softcap": "tanh"},
                {"logit_softcap": "isru", "logit_softcap_temperature": 60.0}, {"layers_without_attention": [12]},
                {"attention_windows": ["long"] * 11}, {"sliding_window_num_blocks": 1},
                {"value_embedding_layers": [0, 2] + [None] * 10},
                {"value_embedding_layers": [None] * 7 + [0] + [None] * 4},
                {"skip_connections": [[6, 5, 0]]}, {"skip_connections": [[5, 6, 12]]}, {"num_scalars": 59},
                {"block_lambdas_offset": 0}]
