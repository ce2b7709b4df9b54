"""Text generation with the masked diffusion LMs (MDLM, BD3-LM): continue prompts and fill masked spans.

    python -m eval_suites generate --model EXPORT --prompt "Once upon a time" --max-new-tokens 64
    python -m eval_suites generate --model EXPORT --infill "The [MASK]{3} sat on the mat." --sampler confidence

Span syntax of `--infill`: `[MASK]` is one token to generate and `[MASK]{n}` n of them; the tokenizer's own mask token
(e.g. `<mask>`) reads the same. Everything else is kept exactly. The model conditions on every kept token (MDLM both
ways; BD3-LM on the blocks before and within the block being generated).

From Python, on an export loaded with `AutoModelForMaskedLM.from_pretrained(repo, trust_remote_code=True)`:

    inputs = infill_inputs("The [MASK]{3} sat on the mat.", tokenizer, model.config)
    ids = model.sample(input_ids=inputs, num_samples=4, sampler="confidence", seed=0)  # or generate(...)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)

`model.sample` alone needs no hubzoo code: put `config.mask_token_id` where tokens are to be generated.
"""

import json
import re
from pathlib import Path
from typing import List, Optional

import torch

from hub_exports import load_tokenizer
from modeling import require_diffusion_policy

MASK_SPAN = r"(?:\[MASK\]{mask})(?:\{{(\d+)\}})?"


def row_start(tokenizer) -> List[int]:
    """The token a training row starts with (BOS, else [CLS]; hubzoo's packing puts it at position 0), if any."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return [] if token is None else [token]


def infill_inputs(template: str, tokenizer, config) -> torch.Tensor:
    """(1, n) ids of `template`: text pieces tokenized without special tokens, `[MASK]` / `[MASK]{n}` (or the
    tokenizer's mask token) as that many `config.mask_token_id`, after the row-start token."""
    own = tokenizer.mask_token
    pattern = re.compile(MASK_SPAN.format(mask="" if not own or own == "[MASK]" else "|" + re.escape(own)))
    ids, position = row_start(tokenizer), 0
    for match in pattern.finditer(template):
        ids += tokenizer(template[position:match.start()], add_special_tokens=False)["input_ids"]
        count = int(match.group(1) or 1)
        if count < 1:
            raise ValueError(f"{match.group(0)!r} in the template asks for no token; write [MASK]{{n}} with n >= 1")
        ids += [config.mask_token_id] * count
        position = match.end()
    ids += tokenizer(template[position:], add_special_tokens=False)["input_ids"]
    if config.mask_token_id not in ids:
        raise ValueError(f"the template {template!r} has no [MASK] span to fill")
    return torch.tensor([ids])


def prompt_inputs(prompt: str, tokenizer, config) -> torch.Tensor:
    """(1, n) ids of a prompt to continue: the row-start token, then the prompt's tokens."""
    ids = row_start(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if config.mask_token_id in ids:
        raise ValueError("the prompt holds the mask token; use --infill to mark spans to fill")
    return torch.tensor([ids])


def generate(model, tokenizer, *, prompt: Optional[str] = None, infill: Optional[str] = None,
             max_new_tokens: Optional[int] = None, **sample_options):
    """(decoded samples with special tokens dropped, their ids) of a prompt continued by `max_new_tokens`, or of an
    infill template. `sample_options` go to `model.sample` (num_samples, sampler, num_steps, tokens_per_step, top_p,
    seed, ...)."""
    require_diffusion_policy(model, "generate")
    if (prompt is None) == (infill is None):
        raise ValueError("give exactly one of prompt and infill")
    if prompt is not None:
        if max_new_tokens is None:
            raise ValueError("a prompt is continued by max_new_tokens tokens; give it")
        inputs = prompt_inputs(prompt, tokenizer, model.config)
    else:
        if max_new_tokens is not None:
            raise ValueError("an infill template states its own spans; max_new_tokens belongs to a prompt")
        inputs = infill_inputs(infill, tokenizer, model.config)
    ids = model.sample(input_ids=inputs, max_new_tokens=max_new_tokens, **sample_options)
    return tokenizer.batch_decode(ids, skip_special_tokens=True), ids


def run_generate(args) -> int:
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(args.model, trust_remote_code=True).eval()
    require_diffusion_policy(model, "generate")  # before the tokenizer and any work
    if args.device:
        model.to(args.device)
    tokenizer = load_tokenizer(args.model)
    options = {name: value for name, value in dict(num_steps=args.steps, tokens_per_step=args.tokens_per_step,
                                                   sampler=args.sampler).items() if value is not None}
    texts, ids = generate(model, tokenizer, prompt=args.prompt, infill=args.infill, max_new_tokens=args.max_new_tokens,
                     num_samples=args.num_samples, top_p=args.top_p, seed=args.seed, **options)
    for index, text in enumerate(texts):
        print(f"--- sample {index}\n{text}")
    if args.output:
        record = {"model": args.model, "prompt": args.prompt, "infill": args.infill,
                  "max_new_tokens": args.max_new_tokens, "top_p": args.top_p, "seed": args.seed, **options,
                  "samples": texts, "sample_ids": ids.tolist()}
        Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def add_generate_parser(commands) -> None:
    parser = commands.add_parser("generate", help="continue a prompt or fill [MASK] spans with a diffusion LM")
    parser.add_argument("--model", required=True, help="MDLM or BD3-LM export folder or Hub repo id")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--prompt", help="text to continue (with --max-new-tokens)")
    inputs.add_argument("--infill", help='text with spans to fill: "[MASK]" one token, "[MASK]{n}" n tokens')
    parser.add_argument("--max-new-tokens", type=int, help="tokens after the prompt")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--sampler", choices=["ddpm", "ddpm_cache", "confidence", "first_hitting"],
                        help="default: the model's (ddpm_cache; ddpm when time-conditioned)")
    parser.add_argument("--steps", type=int, help="ancestral steps (MDLM: in all, default 1000; BD3-LM: per block)")
    parser.add_argument("--tokens-per-step", type=int, help="the confidence sampler's tokens per step (default 1)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus filtering of each draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="e.g. cuda; default: where the model loads (CPU)")
    parser.add_argument("--output", help="also write the samples and settings to this JSON file")
    parser.set_defaults(run=run_generate)
