"""Run `generate` and the `text-generation` pipeline on an exported Backpack under whichever transformers this
interpreter has (the compat 4.57 env or the main one), loaded fresh with `trust_remote_code`; print one JSON line.

Usage: python -m tests.models.backpack.generation_driver <export folder>
"""
import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline


def main(folder: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    prompt = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    common = dict(attention_mask=mask, max_new_tokens=5, pad_token_id=0)
    result = {"version": transformers.__version__}
    for mode, options in {"greedy": dict(do_sample=False), "sample": dict(do_sample=True, top_k=0),
                          "beam": dict(do_sample=False, num_beams=2)}.items():
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            runs.append(model.generate(prompt, use_cache=use_cache, **common, **options).tolist())
        result[mode] = runs
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, trust_remote_code=True)
    result["pipeline"] = generator("w5 w6 w7", max_new_tokens=3, do_sample=False,
                                   return_tensors=True)[0]["generated_token_ids"]
    try:
        model.generate(prompt, cache_implementation="static", **common)
        result["static"] = "generated"
    except ValueError as error:
        result["static"] = str(error)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
