"""BD3-LM conformance declaration: the whole mixin on a tiny config, both classes (generation pass)."""

from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM, Bd3lmModel
from tests.modeling_common import ModelTesterMixin
from tests.models.diffusion_common import MASK_ID, DiffusionInputs


class TestBd3lm(DiffusionInputs, ModelTesterMixin):
    config_class = Bd3lmConfig
    model_classes = (Bd3lmModel, Bd3lmForMaskedDiffusionLM)

    def get_config(self, **overrides):
        # Random modulation at init, as for MDLM (adaLN-Zero would zero the gradients the mixin checks).
        defaults = dict(vocab_size=99, mask_token_id=MASK_ID, pad_token_id=0, block_size=4, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, cond_dim=12,
                        max_position_embeddings=24, timestep_embedding_size=16, zero_init_modulation=False)
        return Bd3lmConfig(**{**defaults, **overrides})

    def invalid_config_overrides(self):
        return [{"block_size": 5}, {"sampling_eps_min": 0.0}, {"sampling_eps_min": 0.5, "sampling_eps_max": 0.5},
                {"sampling_eps_max": 1.5}, {"mask_token_id": -1}, {"hidden_size": 30}]
