"""Perplexity of held-out text: exact for causal LMs, an upper bound from the NELBO for masked diffusion LMs.

For a diffusion LM every sequence is scored with `num_samples` antithetic Monte-Carlo draws of its own noise
(`eval_suites.likelihood`), stratified over [eps, 1] with the strata in a random order per sequence: draw k of every
sequence together is then one unbiased estimate of the corpus NELBO per token. The report is their mean, its standard
error (std over the k / sqrt(num_samples)), and exp(mean) as the perplexity bound with a +-2 standard error
interval. Like the originals' evaluation, the bound is per real token (BD3-LM: on the interval (1e-3, 1), BOS
not scored when `ignore_bos`). exp(NELBO) bounds the perplexity from above; it is not itself a perplexity.
"""

import math
from typing import List


from eval_suites.likelihood import CausalLikelihood, DiffusionLikelihood, is_diffusion_model
from modeling import diffusion_policy


def perplexity_report(model, sequences: List[List[int]], num_samples: int = 8, seed: int = 0,
                      token_budget: int = 16384) -> dict:
    """`sequences`: token ids, each at most `max_position_embeddings` long. The first token is context (BOS) for
    causal LMs and for BD3-LM with `ignore_bos`; MDLM scores every token, as the original does."""
    if not sequences or any(len(row) < 2 for row in sequences):
        raise ValueError("perplexity needs sequences of at least 2 tokens")
    policy = diffusion_policy(model)
    skip_first = policy is None or not policy.scores_first_token(model.config)
    contexts = [row[:1] if skip_first else [] for row in sequences]
    targets = [row[1:] if skip_first else row for row in sequences]
    num_tokens = sum(map(len, targets))
    if is_diffusion_model(model):
        estimator = DiffusionLikelihood(model, num_samples, seed, token_budget, shared_noise=False)
        per_draw = estimator.per_draw_nelbo(targets, contexts)
        corpus = per_draw.sum(0) / num_tokens  # (num_samples,): NELBO per token of each draw
        mean = corpus.mean().item()
        error = corpus.std().item() / math.sqrt(num_samples) if num_samples > 1 else float("nan")
        kind = "NELBO upper bound (Monte Carlo)"
    else:
        estimates = CausalLikelihood(model, token_budget).log_likelihood(targets, contexts)
        mean, error, kind = -sum(e.log_likelihood for e in estimates) / num_tokens, 0.0, "exact"
    return {
        "kind": kind, "nll_per_token": mean, "standard_error": error, "perplexity": math.exp(mean),
        "perplexity_interval": [math.exp(mean - 2 * error), math.exp(mean + 2 * error)] if error == error else None,
        "num_tokens": num_tokens, "num_sequences": len(sequences),
        "num_samples": num_samples if is_diffusion_model(model) else 1,
    }


def markdown_report(result: dict, title: str = "Perplexity") -> str:
    interval = result["perplexity_interval"]
    spread = f" (±2 s.e.: {interval[0]:.2f}–{interval[1]:.2f})" if interval else ""
    return (f"## {title}\n\n{result['kind']}: **{result['perplexity']:.2f}**{spread}; "
            f"NLL {result['nll_per_token']:.4f} "
            f"± {result['standard_error']:.4f} nats per token over {result['num_tokens']:,} tokens in "
            f"{result['num_sequences']:,} sequences, {result['num_samples']} draw(s) each.\n")


