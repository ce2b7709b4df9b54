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

