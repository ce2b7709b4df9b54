"""MDLM conformance declaration: the whole mixin on a tiny config, both classes."""

from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM, MdlmModel
from tests.modeling_common import ModelTesterMixin
from tests.models.diffusion_common import MASK_ID, DiffusionInputs


class TestMdlm(DiffusionInputs, ModelTesterMixin):
    config_class = MdlmConfig
    model_classes = (MdlmModel, MdlmForMaskedDiffusionLM)

    def get_config(self, **overrides):
        # adaLN-Zero would zero every gradient below the output layer at init: the mixin's one-step test needs the
        # gradients, so this config starts from random modulation (the default is tested in test_mdlm_behaviour).
        defaults = dict(vocab_size=99, mask_token_id=MASK_ID, pad_token_id=0, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37, cond_dim=12, max_position_embeddings=24,
                        timestep_embedding_size=16, zero_init_modulation=False)
        return MdlmConfig(**{**defaults, **overrides})

    def invalid_config_overrides(self):
        return [{"hidden_size": 30}, {"mask_token_id": 99}, {"noise_schedule": "cosine"}, {"sampling_eps": 0.0},
                {"hidden_size": 36, "num_attention_heads": 4}, {"adaln": False, "time_conditioning": True}]
