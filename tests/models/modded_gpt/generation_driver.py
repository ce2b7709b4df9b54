"""Run as `python -m tests.models.modded_gpt.generation_driver <export folder>` under any transformers release (4.57
and 5.x): loads the export with trust_remote_code only (no hubzoo import), generates in every mode, runs the
text-generation pipeline and a gradient-checkpointed training step, and prints one JSON line of what it saw."""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline


def main(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    config = model.config
    seen = {"transformers": __import__("transformers").__version__,
            "token_ids": [config.bos_token_id, config.eos_token_id, config.pad_token_id, config.eot_token_id],
            "use_cache": config.use_cache}
    prompt = torch.tensor([[5, 17, 33, 9, 12, 40], [0, 0, 7, 8, 9, 10]])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    common = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    modes = {"greedy": dict(do_sample=False), "beam": dict(do_sample=False, num_beams=3),
             "sample": dict(do_sample=True, top_k=5)}
    for name, kwargs in modes.items():
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            runs.append(model.generate(prompt, use_cache=use_cache, **common, **kwargs))
        seen[name] = {"shape": list(runs[0].shape), "cached_equals_uncached": torch.equal(*runs),
                      "max_id": int(runs[0].max())}
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("w5 w6 w7", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    seen["pipeline"] = text
    try:
        model.generate(prompt, cache_implementation="static", **common)
        seen["static"] = "generated"
    except ValueError as refused:
        seen["static"] = str(refused)
    # GradientCheckpointingLayer exists on this release and gives the same gradients as no checkpointing.
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        trained = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).train()
        if checkpointing:
            trained.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trained(prompt, attention_mask=mask, labels=prompt).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in trained.parameters() if p.grad is not None]))
    seen["checkpointing_blocks"] = sum(getattr(m, "gradient_checkpointing", False) is True
                                       for m in trained.model.layers)
    seen["checkpointed_grads_equal"] = bool(torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5))
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1])
