"""Run under another transformers release (`python -m tests.models.ltg_bert.compat_driver`, from the repository
root): the LTG-BERT classes' gradient checkpointing and attention interface there. Prints one JSON line.
Also holds the helpers of test_ltg_bert_transformers_contract.py, as the other env has no pytest."""
import json

import torch
import transformers
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM


def config(**overrides):
    # No dropout, so training-mode runs are deterministic; bucket 4 with T=9 reaches the log-spaced buckets.
    defaults = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=24, position_bucket_size=4, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, num_labels=3)
    return LtgBertConfig(**{**defaults, **overrides})


def batch():
    input_ids = torch.randint(5, 99, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


def first_tensor(output):
    return output[0] if isinstance(output, tuple) else next(iter(output.values()))


def gradients(model, inputs):
    """Parameter gradients of the mean square of the first output of `model` (training mode)."""
    model.train()
    model.zero_grad()
    first_tensor(model(**inputs)).pow(2).mean().backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def main():
    cfg = config(num_hidden_layers=3)
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(cfg)
    inputs = batch()
    plain = gradients(model, inputs)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checked = gradients(model, inputs)
    model.eval()
    logits, sdpa_calls = {}, []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = lambda *args, **kwargs: sdpa_calls.append(1) or sdpa(
        *args, **kwargs)  # counts that "sdpa" really runs through transformers' function (which calls this)
    for implementation in ("eager", "sdpa"):
        model.config._attn_implementation = implementation
        with torch.no_grad():
            logits[implementation] = model(**inputs).logits
    torch.nn.functional.scaled_dot_product_attention = sdpa
    model.config._attn_implementation = "flex_attention"
    try:
        model(**inputs)
        flex = "ran"
    except ValueError as error:
        flex = str(error)
    print(json.dumps({
        "transformers": transformers.__version__,
        "layers_are_checkpointing_layers": all(isinstance(layer, GradientCheckpointingLayer)
                                               for layer in model.ltg_bert.layers),
        "layers_checkpointed": [layer.gradient_checkpointing for layer in model.ltg_bert.layers],
        "max_gradient_difference": max((plain[name] - checked[name]).abs().max().item() for name in plain),
        "sdpa_calls": len(sdpa_calls),
        "max_eager_sdpa_difference": (logits["eager"] - logits["sdpa"]).abs().max().item(),
        "flex": flex,
    }))


if __name__ == "__main__":
    main()
