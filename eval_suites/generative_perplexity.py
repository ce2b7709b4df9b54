"""Generative perplexity of masked diffusion samples: how likely a causal LM (the scorer, e.g. GPT-2 large) finds text
that an MDLM or BD3-LM export drew, the number the MDLM and BD3-LM papers report next to their likelihood bound.

What is computed, following kuleshov-group/mdlm's `compute_generative_perplexity`:

1. Samples are drawn with the diffusion model's own `sample` and decoded with its tokenizer, special tokens kept
   (as the original's `batch_decode`; `skip_special_tokens` drops them).
2. Each text is re-tokenized with the scorer's tokenizer as that tokenizer does by default (GPT-2 adds no BOS or EOS;
   a tokenizer that adds BOS, as Llama's, keeps it), then cut into consecutive, non-overlapping chunks of the
   scorer's context length. Every chunk is scored on its own, without the previous chunk as context, so its first
   token is never a target (the original splits its batch the same way; BD3-LM's code slides an overlapping window
   instead, which this does not do).
3. Inside a chunk, target j >= 1 costs -log p(x_j | x_<j). EOS targets are left out except the chunk's first EOS
   (the end of the first document counts, the separators after it do not), as the original's mask does.
   Unlike the original no text is truncated, and no padding is scored: the original pads a batch with EOS and so
   also scores an end-of-text after its shorter rows, a count that depends on which rows share a batch.
4. generative perplexity = exp(sum of all target NLLs / number of targets), token-weighted over all samples (not a
   mean of per-sample perplexities).

Next to it, as the BD3-LM paper does to expose degenerate repetition (a text repeating one word has a low generative
perplexity), the mean over samples of the unigram entropy of each sample's tokens, -sum_v p_v ln p_v in nats with
p_v the share of token v in that sample. BD3-LM's code computes it on the scorer's re-tokenization (the GPT-2 tokens,
which are the sample's own there) and so does `mean_unigram_entropy`; `mean_unigram_entropy_sample_ids` is the same
on the diffusion model's ids, when known. A sample counts as repetitive when fewer than half of its scorer 4-grams are
distinct; `repetitive_share` is the share of such samples.
"""

import inspect
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from eval_suites.likelihood import evaluation_mode
from eval_suites.token_sequences import check_encoded
from hub_exports import load_tokenizer
from modeling import device_value_checks, diffusion_policy

REPETITION_NGRAM = 4
REPETITION_MAX_DISTINCT_SHARE = 0.5  # at most this share of distinct n-grams: the sample is mostly repetition


@dataclass
class TextScore:
    nll: float  # summed over the scored targets, nats
    num_tokens: int  # scored targets
    scorer_ids: List[int]  # the text as the scorer's tokenizer encodes it


def _load_config(name: str, flag: str):
    """The config of a folder or Hub name; a name that cannot be a Hub id (absolute, starting with '.', or with more
    than one '/') and is not there is a missing folder, said as such rather than as a failed download."""
    if not Path(name).exists() and (Path(name).is_absolute() or name.startswith(".") or name.count("/") > 1):
        raise ValueError(f"{flag} {name}: no such folder")
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"{flag} {name}: neither a model folder nor a loadable Hub model ({error})") from error


def diffusion_model_config(name: str):
    """The config of a masked diffusion export, refused (before loading weights) when it is anything else."""
    config = _load_config(name, "--model")
    if diffusion_policy(config) is None:
        raise ValueError(f"--model {name} is a {config.model_type!r} model, not a masked diffusion model (MDLM or "
                         "BD3-LM): generative perplexity scores diffusion samples")
    return config


def scorer_config(name: str):
    """The config of a causal LM, refused (before loading weights) when AutoModelForCausalLM cannot build it."""
    config = _load_config(name, "--scorer-model")
    remote_classes = getattr(config, "auto_map", None) or {}
    if "AutoModelForCausalLM" not in remote_classes and type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"--scorer-model {name} ({config.model_type!r}) is not a causal LM: the scorer must load "
                         "with AutoModelForCausalLM")
    return config


def scorer_context_length(config, override: Optional[int] = None) -> int:
    """Tokens the scorer reads at once: `override`, else its `max_position_embeddings` (GPT-2: n_positions)."""
    length = override or getattr(config, "max_position_embeddings", None)
    if not length:
        raise ValueError(f"the scorer ({config.model_type!r}) states no max_position_embeddings: give its context "
                         "length with --scorer-context")
    if override and getattr(config, "max_position_embeddings", None) and override > config.max_position_embeddings:
        raise ValueError(f"--scorer-context {override} exceeds the scorer's max_position_embeddings "
                         f"({config.max_position_embeddings})")
    if length < 2:
        raise ValueError(f"a scorer context of {length} token(s) scores nothing: each chunk's first token is context")
    return length


def load_model(name: str, auto_class, device: Optional[str] = None):
    model = auto_class.from_pretrained(name, trust_remote_code=True).eval()
    if device:
        model.to(device)
    return model, load_tokenizer(name)


def load_diffusion_model(name: str, device: Optional[str] = None):
    diffusion_model_config(name)
    return load_model(name, AutoModelForMaskedLM, device)


def load_scorer(name: str, device: Optional[str] = None):
    scorer_config(name)
    return load_model(name, AutoModelForCausalLM, device)


def sampling_settings(model, length: Optional[int] = None, num_steps: Optional[int] = None,
                      sampler: Optional[str] = None, top_p: Optional[float] = None) -> dict:
    """The keyword arguments `model.sample` gets: only those given, so the model's defaults hold for the rest (and
    the model, not this suite, judges sampler names). Refuses what the model cannot do before anything is drawn."""
    config = model.config
    length = config.max_position_embeddings if length is None else length
    if not 0 < length <= config.max_position_embeddings:
        raise ValueError(f"--length {length}: the model samples 1 to {config.max_position_embeddings} tokens "
                         "(its max_position_embeddings)")
    if diffusion_policy(model).blockwise and length % config.block_size:
        raise ValueError(f"--length {length} is not a whole number of the model's blocks ({config.block_size})")
    if num_steps is not None and num_steps < 1:
        raise ValueError(f"--steps must be at least 1, got {num_steps}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"--top-p must lie in (0, 1], got {top_p}")
    settings = {"length": length}
    given = {"num_steps": num_steps, "sampler": sampler, "top_p": top_p}
    accepted = inspect.signature(model.sample).parameters
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted:
            raise ValueError(f"this {type(model).__name__} samples without a {key!r} setting")
        settings[key] = value
    return settings


def effective_settings(model, settings: dict) -> dict:
    """`settings` completed with the defaults of `model.sample` for the report (None: the model decides, e.g. BD3-LM
    takes block_size steps per block)."""
    parameters = inspect.signature(model.sample).parameters
    defaults = {key: parameters[key].default for key in ("num_steps", "sampler", "top_p") if key in parameters}
    return {**defaults, **settings}


def check_counts(num_samples: int, batch_size: int) -> None:
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"--num-samples and --batch-size must be at least 1, got {num_samples} and {batch_size}")


def draw_samples(model, num_samples: int, batch_size: int, seed: int, settings: dict) -> List[List[int]]:
    """`num_samples` token-id sequences from `model.sample`, `batch_size` at a time, all from one generator seeded
    with `seed`: the same seed and batch size give the same samples."""
    check_counts(num_samples, batch_size)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        samples.extend(model.sample(num_samples=count, generator=generator, **settings).cpu().tolist())
    return samples


def sample_from_export(name: str, num_samples: int, batch_size: int, seed: int, device: Optional[str] = None,
                       skip_special_tokens: bool = False, **sample_options) -> tuple:
    """(texts, token ids, the sampling settings for the report) of `num_samples` samples of the export `name`;
    `sample_options` (length, num_steps, sampler, top_p; None: the model's default) as `sampling_settings` takes."""
    model, tokenizer = load_diffusion_model(name, device)
    settings = sampling_settings(model, **sample_options)
    sample_ids = draw_samples(model, num_samples, batch_size, seed, settings)
    texts = tokenizer.batch_decode(sample_ids, skip_special_tokens=skip_special_tokens)
    report = {"model": name, **effective_settings(model, settings), "seed": seed, "batch_size": batch_size,
              "skip_special_tokens": skip_special_tokens}
    return texts, sample_ids, report


def refuse_sampling_flags(**given) -> None:
    """Settings of how samples are drawn make no sense for samples read from a file: refuse them, not ignore them."""
    named = [f"--{key.replace('_', '-')}" for key, value in given.items() if value is not None]
    if named:
        raise ValueError(f"{', '.join(named)} set how samples are drawn: they need --model, not --samples")


def read_samples(path) -> tuple:
    """(texts, token ids or None) from a .jsonl file (per line a JSON string, or an object with "text" and optionally
    "token_ids", as `write_samples` writes) or any other text file (one sample per non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--samples {path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"--samples {path} holds no samples")
    if path.suffix != ".jsonl":
        return lines, None
    texts, ids = [], []
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"--samples {path} line {number}: expected a JSON string or an object with a \"text\"")
        texts.append(record["text"])
        ids.append(record.get("token_ids"))
    return texts, ids if all(row is not None for row in ids) else None


def write_samples(path, texts: Sequence[str], ids: Sequence[List[int]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for text, row in zip(texts, ids):
            handle.write(json.dumps({"text": text, "token_ids": row}) + "\n")


def scored_targets(chunk: Sequence[int], eos_token_id: Optional[int]) -> List[bool]:
    """For targets 1..len-1 of a chunk: whether each is scored (not EOS, or the chunk's first EOS)."""
    seen_eos, keep = 0, []
    for position, token in enumerate(chunk):
        is_eos = token == eos_token_id
        seen_eos += is_eos
        if position:
            keep.append(not is_eos or seen_eos == 1)
    return keep


def chunks(ids: List[int], context_length: int) -> List[List[int]]:
    return [ids[start:start + context_length] for start in range(0, len(ids), context_length)]


@torch.no_grad()
def score_texts(scorer, tokenizer, texts: Sequence[str], context_length: int, batch_size: int = 8) -> List[TextScore]:
    """The summed target NLL and target count of every text under the causal LM `scorer` (see the module docstring)."""
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    pieces = [(index, chunk) for index, ids in enumerate(encoded) for chunk in chunks(ids, context_length)]
    check_encoded(scorer, tokenizer, [chunk for _, chunk in pieces])
    nll, counts = [0.0] * len(texts), [0] * len(texts)
    pieces = sorted((piece for piece in pieces if len(piece[1]) > 1), key=lambda piece: len(piece[1]))
    device = next(scorer.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with evaluation_mode(scorer), device_value_checks(scorer, False):
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start:start + batch_size]
            for (index, chunk), (total, count) in zip(batch, _score_chunks(scorer, [c for _, c in batch], pad_id,
                                                                           tokenizer.eos_token_id, device)):
                nll[index] += total
                counts[index] += count
    return [TextScore(total, count, ids) for total, count, ids in zip(nll, counts, encoded)]


def _score_chunks(scorer, batch: List[List[int]], pad_id: int, eos_token_id, device) -> List[tuple]:
    """(summed NLL of the scored targets, their number) of every chunk; right padding is never a target."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention, scored = torch.zeros_like(ids), torch.zeros((len(batch), width - 1), dtype=torch.bool)
    for row, chunk in enumerate(batch):
        ids[row, :len(chunk)] = torch.tensor(chunk)
        attention[row, :len(chunk)] = 1
        scored[row, :len(chunk) - 1] = torch.tensor(scored_targets(chunk, eos_token_id))
    logits = scorer(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
    log_probs = logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None].to(device))[..., 0]
    nll = (-log_probs.double().cpu()).masked_fill(~scored, 0.0)
    return list(zip(nll.sum(1).tolist(), scored.sum(1).tolist()))


def unigram_entropy(ids: Sequence[int]) -> float:
    """-sum_v p_v ln p_v (nats) of the token distribution of one sequence; 0 for an empty one."""
    counts = Counter(ids).values()
    total = sum(counts)
    return -sum(count / total * math.log(count / total) for count in counts) if total else 0.0


def is_repetitive(ids: Sequence[int], n: int = REPETITION_NGRAM,
                  max_distinct_share: float = REPETITION_MAX_DISTINCT_SHARE) -> bool:
    grams = [tuple(ids[start:start + n]) for start in range(len(ids) - n + 1)]
    return bool(grams) and len(set(grams)) / len(grams) <= max_distinct_share


def generative_perplexity_report(scores: Sequence[TextScore], sample_ids: Optional[Sequence[List[int]]] = None) -> dict:
    """The numbers of the report from the texts' scores and, when known, the diffusion model's ids of the samples."""
    num_tokens = sum(score.num_tokens for score in scores)
    if not num_tokens:
        raise ValueError("no token of any sample was scored: samples of fewer than two scorer tokens score nothing")
    nll = sum(score.nll for score in scores) / num_tokens
    entropies = [unigram_entropy(score.scorer_ids) for score in scores]
    repetitive = [is_repetitive(score.scorer_ids) for score in scores]
    return {
        "generative_perplexity": math.exp(nll),
        "nll_per_token": nll,
        "num_scored_tokens": num_tokens,
        "num_samples": len(scores),
        "mean_unigram_entropy": sum(entropies) / len(entropies),
        "mean_unigram_entropy_sample_ids": (sum(map(unigram_entropy, sample_ids)) / len(sample_ids)
                                            if sample_ids else None),
        "repetitive_share": sum(repetitive) / len(repetitive),
        "repetition_rule": {"ngram": REPETITION_NGRAM, "max_distinct_share": REPETITION_MAX_DISTINCT_SHARE},
        "per_sample": [{"nll": score.nll, "scored_tokens": score.num_tokens, "unigram_entropy": entropy,
                        "repetitive": flag} for score, entropy, flag in zip(scores, entropies, repetitive)],
    }


def generative_perplexity(texts: Sequence[str], scorer_name: str, context_length: int, batch_size: int = 8,
                          device: Optional[str] = None, sample_ids: Optional[Sequence[List[int]]] = None) -> dict:
    """The report of `texts` under the causal LM `scorer_name`, scored in chunks of `context_length` tokens."""
    scorer, tokenizer = load_scorer(scorer_name, device)
    result = generative_perplexity_report(score_texts(scorer, tokenizer, texts, context_length, batch_size),
                                          sample_ids)
    result["scorer"] = {"name": scorer_name, "context_length": context_length,
                        "eos_token_id": tokenizer.eos_token_id}
    return result


def summary_line(result: dict) -> str:
    sampling = result["sampling"]
    if sampling:
        options = ", ".join(f"{key} {'default' if sampling.get(key) is None else sampling[key]}"
                            for key in ("num_steps", "sampler", "top_p", "seed") if key in sampling)
        drawn = f"{result['num_samples']} samples of {sampling['length']} tokens from {sampling['model']} ({options})"
    else:
        drawn = f"{result['num_samples']} samples from {result['samples_file']}"
    return (f"Generative perplexity {result['generative_perplexity']:.2f} under {result['scorer']['name']} over "
            f"{result['num_scored_tokens']:,} tokens of {drawn}; mean unigram entropy "
            f"{result['mean_unigram_entropy']:.3f} nats; repetitive {result['repetitive_share']:.1%}")
