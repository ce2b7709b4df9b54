"""Word similarity: Spearman correlation between human similarity ratings and the cosine similarity of a model's word
vectors, on SimLex-999, WordSim-353, RG-65, SimVerb-3500 and Multi-SimLex (en, fr).

Vectors come from the input embedding (any model of the zoo) or, for Backpack LMs, from each sense vector (one
correlation per sense, as the Backpack paper's Sim_l, and the best of them, which is chosen on the test pairs and so
optimistic). A word is looked up as the tokenizer encodes it (optionally with a leading space, for byte-level BPE
such as GPT-2's). Words that become several tokens are handled explicitly: `multi_token="skip"` leaves their pairs out,
`"mean"` averages the vectors of their tokens; a word containing the unknown token is always left out. Every report
says how many pairs were scored, skipped for multi-token words and skipped for unknown words.
"""

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

# name -> (path under ../shared/data, format)
DATASETS = {
    "simlex999": ("word_similarity/SimLex-999.txt", "simlex"),
    "ws353": ("word_similarity/WS353.csv", "ws353"),
    "rg65": ("word_similarity/RG65.csv", "rg65"),
    "simverb3500": ("word_similarity/SimVerb-3500.txt", "simverb"),
    "multisimlex_en": ("multisimlex/multisimlex_en.tsv", "multisimlex"),
    "multisimlex_fr": ("multisimlex/multisimlex_fr.tsv", "multisimlex"),
}


def load_word_pairs(path, file_format: str) -> List[Tuple[str, str, float]]:
    """(word1, word2, human score) triples of one of the dataset formats in `DATASETS`."""
    text = Path(path).read_text(encoding="utf-8")
    if file_format in ("simlex", "multisimlex"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
        column = "SimLex999" if file_format == "simlex" else "score"
        return [(r["word1"], r["word2"], float(r[column])) for r in rows]
    if file_format == "simverb":  # headerless: word1, word2, POS, score, relation
        return [(c[0], c[1], float(c[3])) for c in csv.reader(text.splitlines(), delimiter="\t") if c]
    if file_format == "ws353":
        return [(r[0], r[1], float(r[2])) for r in list(csv.reader(text.splitlines()))[1:] if r]
    if file_format == "rg65":  # headerless, semicolons, trailing spaces
        return [(c[0].strip(), c[1].strip(), float(c[2])) for c in csv.reader(text.splitlines(), delimiter=";") if c]
    raise ValueError(f"unknown word-pair format {file_format!r}; known: simlex, multisimlex, simverb, ws353, rg65")


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    result = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[order[end + 1]] == values[order[start]]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the tie-averaged ranks."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"Spearman needs two equally long samples of at least 2 values, got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denominator) if denominator else float("nan")


def token_ids(tokenizer, word: str, prefix_space: bool) -> List[int]:
    return tokenizer((" " if prefix_space else "") + word, add_special_tokens=False).input_ids


def word_table(model, tokenizer, words, source: str, multi_token: str, prefix_space: bool) -> Dict[str, tuple]:
    """{word: (status, vectors)}: status "ok", "multi-token" or "unknown"; vectors (k, d) for senses, (1, d) for
    embeddings (None when the word is left out)."""
    if multi_token not in ("skip", "mean"):
        raise ValueError(f"multi_token must be 'skip' or 'mean', got {multi_token!r}")
    table = {}
    embedding = model.get_input_embeddings().weight
    for word in sorted(set(words)):
        ids = token_ids(tokenizer, word, prefix_space)
        if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
            table[word] = ("unknown", None)
            continue
        if len(ids) > 1 and multi_token == "skip":
            table[word] = ("multi-token", None)
            continue
        with torch.no_grad():
            index = torch.tensor([ids], device=embedding.device)
            if source == "senses":
                vectors = sense_vectors(model, index)[0].mean(dim=1)  # (k, d)
            else:
                vectors = embedding[index[0]].mean(dim=0, keepdim=True)  # (1, d)
        table[word] = ("ok" if len(ids) == 1 else "multi-token (mean)", vectors.float().cpu())
    return table


def sense_vectors(model, ids: torch.Tensor) -> torch.Tensor:
    trunk = getattr(model, "backpack", model)
    if not hasattr(trunk, "sense_vectors"):
        raise ValueError(f"{type(model).__name__} has no sense vectors; use source='embeddings'")
    return trunk.sense_vectors(ids)  # (B, k, T, d)


def evaluate_word_similarity(model, tokenizer, pairs, source: str = "embeddings", multi_token: str = "skip",
                             prefix_space: bool = False) -> dict:
    """Spearman of human scores against cosine similarities, with coverage. `source`: "embeddings" or "senses"."""
    if source not in ("embeddings", "senses"):
        raise ValueError(f"source must be 'embeddings' or 'senses', got {source!r}")
    table = word_table(model, tokenizer, [w for p in pairs for w in p[:2]], source, multi_token, prefix_space)
    scored, counts = [], {"multi-token": 0, "unknown": 0}
    for first, second, human in pairs:
        statuses = (table[first][0], table[second][0])
        missing = [s for s in statuses if s in counts]
        if missing:
            counts["unknown" if "unknown" in missing else "multi-token"] += 1
            continue
        a, b = table[first][1], table[second][1]
        scored.append((human, torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()))
    result = {"num_pairs": len(pairs), "num_scored": len(scored), "coverage": len(scored) / len(pairs) if pairs else 0,
              "skipped_multi_token": counts["multi-token"], "skipped_unknown": counts["unknown"],
              "multi_token": multi_token, "source": source,
              "averaged_multi_token_words": sum(s == "multi-token (mean)" for s, _ in table.values())}
    if len(scored) < 2:
        result["spearman"] = None
        return result
    human = [h for h, _ in scored]
    similarities = np.stack([s for _, s in scored])  # (pairs, k or 1)
    per_vector = [spearman(human, similarities[:, index]) for index in range(similarities.shape[1])]
    if source == "senses":
        result["spearman_per_sense"] = per_vector
        best = int(np.nanargmax(per_vector))
        result.update(spearman=per_vector[best], best_sense=best)
    else:
        result["spearman"] = per_vector[0]
    return result


def evaluate_datasets(model, tokenizer, data_dir, names: Optional[Sequence[str]] = None, **options) -> dict:
    """{dataset name: result} for the datasets of `DATASETS` found under `data_dir` (the `../shared/data` folder)."""
    results = {}
    for name in names or DATASETS:
        relative, file_format = DATASETS[name]
        results[name] = evaluate_word_similarity(model, tokenizer, load_word_pairs(Path(data_dir) / relative,
                                                                                   file_format), **options)
    return results


def markdown_report(results: dict, title: str = "Word similarity") -> str:
    lines = [f"## {title}", "", "| dataset | source | Spearman | best sense | scored / pairs | multi-token skipped | "
             "unknown skipped |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        lines.append(f"| {name} | {r['source']} | {rho} | {r.get('best_sense', '—')} | {r['num_scored']} / "
                     f"{r['num_pairs']} | {r['skipped_multi_token']} | {r['skipped_unknown']} |")
    return "\n".join(lines) + "\n"
