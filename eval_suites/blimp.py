"""BLiMP: accuracy on minimal pairs (grammatical vs ungrammatical sentence) from sentence log-likelihoods.

Reads any directory of BLiMP-format files (`*.jsonl` or `*.jsonl.gz`, one pair per line with `sentence_good`,
`sentence_bad`, and optionally `UID` (paradigm), `linguistics_term` (phenomenon), `field`, `pairID`). Scores are
summed log-probabilities (never means: means favour longer sentences differently); the scorer and how it treats
special tokens are named in the result. The headline accuracy is the mean over paradigms;
a pair is correct only if the good sentence scores strictly higher (ties, e.g. BLiMP's 7 pairs with identical
sentences, count as wrong).
"""

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import evaluate

from eval_suites.scoring import build_scorer

METRIC_DIR = Path(__file__).with_name("metrics") / "blimp"
SPECIAL_TOKEN_HANDLING = {
    "pll": "tokenizer framing kept (e.g. [CLS] ... [SEP]); each non-special token masked alone and scored; "
           "special tokens never masked or scored",
    "pll_word_l2r": "as pll, plus the later tokens of the scored token's word are masked (Kauf & Ivanova 2023)",
    "causal": "BOS (else EOS) prepended and not scored; every sentence token scored given its prefix",
    "elbo": "leading special tokens (e.g. [CLS]) kept clean as context; the other tokens scored by minus the NELBO, "
            "noise shared by both sentences of a pair",
}


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    paradigm: str
    phenomenon: str
    pair_id: str


def load_pairs(directory, limit_per_paradigm: Optional[int] = None) -> List[MinimalPair]:
    """Every pair in every `*.jsonl`/`*.jsonl.gz` file of `directory` (sorted by file name). A missing or empty
    folder, a line that is not a JSON object with string `sentence_good`/`sentence_bad`, an unreadable file and a file
    without pairs are ValueErrors naming the folder, or the file and line."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a folder of BLiMP-format *.jsonl / *.jsonl.gz files"
                         + ("" if directory.exists() else " (it does not exist)"))
    files = sorted(p for p in directory.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not files:
        raise ValueError(f"No *.jsonl or *.jsonl.gz files in {directory}")
    pairs = []
    for path in files:
        try:
            paradigm_pairs = _read_pairs(path, limit_per_paradigm)
        except (OSError, EOFError, UnicodeDecodeError) as error:  # a damaged gzip stream, bytes that are not UTF-8
            raise ValueError(f"{path} cannot be read: {error}") from None
        if not paradigm_pairs:
            raise ValueError(f"{path} holds no minimal pairs" + (" (only blank lines)" if limit_per_paradigm is None
                                                                 else f" in its first {limit_per_paradigm} lines"))
        pairs += paradigm_pairs
    return pairs


def _read_pairs(path: Path, limit: Optional[int]) -> List[MinimalPair]:
    opener = gzip.open if path.name.endswith(".gz") else open
    default_paradigm = path.name.split(".jsonl")[0]
    pairs = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if limit is not None and line_number > limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number} is not valid JSON: {error}") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(key), str)
                                                       for key in ("sentence_good", "sentence_bad")):
                raise ValueError(f"{path}:{line_number} is not a JSON object with string sentence_good and "
                                 "sentence_bad")
            paradigm = record.get("UID", default_paradigm)
            pairs.append(MinimalPair(record["sentence_good"], record["sentence_bad"], paradigm,
                                     record.get("linguistics_term", paradigm),
                                     str(record.get("pairID", line_number - 1))))
    return pairs


def unk_rate(tokenizer, sentences: List[str]) -> float:
    """Share of (non-special) tokens that are the unknown token: high values mean the tokenizer does not fit."""
    if tokenizer.unk_token_id is None:
        return 0.0
    ids = [i for row in tokenizer(list(sentences), add_special_tokens=False)["input_ids"] for i in row]
    return sum(i == tokenizer.unk_token_id for i in ids) / max(1, len(ids))


def evaluate_blimp(model, tokenizer, pairs: List[MinimalPair], scorer: str = "pll", token_budget: int = 8192) -> dict:
    """Score every sentence once and return accuracy (mean over paradigms) with the sanity numbers."""
    sentences = sorted({s for pair in pairs for s in (pair.good, pair.bad)})
    scores = dict(zip(sentences, build_scorer(scorer, model, tokenizer, token_budget=token_budget).score(sentences)))
    metric = evaluate.load(str(METRIC_DIR))
    result = metric.compute(
        good_scores=[scores[p.good] for p in pairs], bad_scores=[scores[p.bad] for p in pairs],
        paradigms=[p.paradigm for p in pairs], phenomena=[p.phenomenon for p in pairs],
    )
    result.update(
        scorer=scorer, special_tokens=SPECIAL_TOKEN_HANDLING.get(scorer, "see the scorer's documentation"),
        reduction="sum of natural-log token probabilities", num_paradigms=len(result["per_paradigm"]),
        num_sentences=len(sentences), unk_rate=unk_rate(tokenizer, sentences),
        # BLiMP itself has a few pairs whose two sentences are identical; they tie and count as wrong.
        num_identical_pairs=sum(pair.good == pair.bad for pair in pairs),
    )
    return result


def markdown_report(result: dict, title: str = "BLiMP") -> str:
    lines = [
        f"## {title}", "",
        f"Accuracy (mean over {result['num_paradigms']} paradigms): **{result['accuracy']:.4f}**; "
        f"pooled over {result['num_pairs']} pairs: {result['micro_accuracy']:.4f}. Scorer `{result['scorer']}` "
        f"({result['reduction']}; {result['special_tokens']}). UNK rate {result['unk_rate']:.4f}; "
        f"ties {result['num_ties']} (counted wrong), of which {result['num_identical_pairs']} pairs have identical "
        "sentences.", "",
        "| Phenomenon | Accuracy |", "|---|---|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in result["per_phenomenon"].items()]
    lines += ["", "| Paradigm | Accuracy |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in result["per_paradigm"].items()]
    return "\n".join(lines) + "\n"
