"""What the MDLM and BD3-LM conformance declarations share: noisy inputs with their t, and clean labels."""

import torch

MASK_ID = 4  # the [MASK] of `tests.modeling_common.tiny_tokenizer`


class DiffusionInputs:
    """Inputs are x_t (about a third of the tokens masked) with one t per sequence; labels are a clean x_0 that
    agrees with x_t wherever x_t is not masked."""

    def get_inputs(self, config, batch_size=3, seq_len=8, generator=None):
        generator = generator or torch.Generator().manual_seed(0)
        clean = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator)
        masked = torch.rand((batch_size, seq_len), generator=generator) < 0.35
        return {"input_ids": clean.masked_fill(masked, config.mask_token_id),
                "attention_mask": torch.ones_like(clean),
                "timesteps": torch.rand(batch_size, generator=generator) * 0.9 + 0.05}

    def get_labels(self, model_class, config, inputs, generator):
        if not model_class.__name__.endswith("ForMaskedDiffusionLM"):
            return None
        noisy = inputs["input_ids"]
        guesses = torch.randint(5, config.vocab_size, noisy.shape, generator=generator)
        return torch.where(noisy == config.mask_token_id, guesses, noisy)


def register_base_model_for_common_tests(test_case, auto_classes) -> None:
    """transformers' common tests tell an architecture's base model (no head, no loss: left out of the training and
    checkpointing tests, as BertModel is) by its name in `MODEL_MAPPING_NAMES`, the AutoModel table of transformers'
    own architectures. Our AutoModel class is registered as remote code, so it is absent from that table: list it
    there for the duration of the test, under the architecture's model_type."""
    from unittest import mock

    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    base = auto_classes["AutoModel"]
    patcher = mock.patch.dict(MODEL_MAPPING_NAMES, {base.config_class.model_type: base.__name__})
    patcher.start()
    test_case.addCleanup(patcher.stop)
