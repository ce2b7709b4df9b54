"""Run as `python -m tests.models.diffusion_compat_driver` under any transformers release: prints one JSON line with,
per diffusion head class, how often each of its 2 blocks ran its forward in a training step with gradient checkpointing
on (2 = recomputed in the backward), whether the gradients equal those without it, whether eager and sdpa attention
agree, and whether the eager attention probabilities are distributions. Compared across releases by
tests/models/test_diffusion_transformers_contract.py."""

import json

import torch
import transformers

from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM

SIZES = dict(vocab_size=40, mask_token_id=39, pad_token_id=0, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0,
             zero_init_modulation=False)


def check(model_class, config):
    torch.manual_seed(0)
    model = model_class(config).train()
    layers = (getattr(model, "mdlm", None) or model.bd3lm).layers
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(5, 39, (2, 8), generator=generator)
    noisy = clean.masked_fill(torch.rand(2, 8, generator=generator) < 0.4, 39)
    inputs = {"input_ids": noisy, "timesteps": torch.tensor([0.3, 0.8]), "labels": clean}

    def step():
        calls = [0] * len(layers)
        hooks = [layer.qkv_proj.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
                 for i, layer in enumerate(layers)]
        model.zero_grad()
        model(**inputs).loss.backward()
        for hook in hooks:
            hook.remove()
        return calls, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    _, plain = step()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls, checkpointed = step()
    model.gradient_checkpointing_disable()
    model.eval()
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True)
    return {
        "is_checkpointing_layer": all(isinstance(layer, transformers.modeling_layers.GradientCheckpointingLayer)
                                      for layer in layers),
        "recomputed": calls,
        "grads_equal": len(plain) == len(checkpointed) and all(torch.allclose(a, b, atol=1e-6)
                                                               for a, b in zip(plain, checkpointed)),
        "eager_equals_sdpa": bool(torch.allclose(eager.logits, sdpa, atol=1e-5)),
        "attention_rows_sum_to_one": all(bool(torch.allclose(probs.sum(-1), torch.ones(()))) for probs in
                                         eager.attentions),
    }


if __name__ == "__main__":
    results = {"transformers": transformers.__version__,
               "mdlm": check(MdlmForMaskedDiffusionLM, MdlmConfig(**SIZES)),
               "bd3lm": check(Bd3lmForMaskedDiffusionLM, Bd3lmConfig(**SIZES, block_size=4))}
    print(json.dumps(results))
