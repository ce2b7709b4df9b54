"""SQuAD v1.1 exact match and F1 as a local `evaluate` metric: `evaluate.load("eval_suites/metrics/squad")` works
offline. The definitions are those of the official `evaluate-v1.1.py`, so the numbers are comparable with published
SQuAD v1.1 results.

Inputs: `predictions`, one answer string per question; `references`, for each question the list of its gold answer
strings (the dev set has three or more per question, duplicates included; duplicates change nothing).

* Normalisation, in this order: lower-case; delete every ASCII punctuation character (`string.punctuation`); replace
  the whole words a/an/the by a space; collapse whitespace. The order matters: "the-end" loses its hyphen first and
  becomes "theend", which is not an article. Unicode punctuation ("–", "’") is kept, as the official script keeps it.
* `exact_match`: 1 when the normalised prediction equals the normalised gold, else 0.
* `f1`: over the whitespace tokens of the normalised strings, overlap = the size of the multiset intersection;
  precision = overlap / prediction tokens, recall = overlap / gold tokens, F1 their harmonic mean, and 0 when the
  overlap is empty (so an empty prediction scores 0 without a division by zero).
* A question scores the MAX over its golds (EM and F1 each take their own maximum); the corpus score is the mean over
  questions times 100, i.e. both `exact_match` and `f1` are on the official script's 0-100 scale.

Quirk kept from the official script: a gold that normalises to nothing (the dev set has three golds that are just
".") matches an empty prediction exactly (EM 1) yet gives F1 0, since F1 needs a shared token.

Unlike the official script, which takes predictions keyed by question id and scores a missing one as 0, this takes
aligned lists: every question has a prediction. Pass "" for an unanswered question (it scores 0 against any gold that
keeps a word after normalisation).
"""

import re
import string
from collections import Counter
from typing import Callable, List, Sequence

import datasets
import evaluate

# Whole words only: "theatre" and "anthem" keep their letters.
ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation (see the module docstring for the order and why it matters)."""
    text = text.lower()
    text = "".join(character for character in text if character not in PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the two strings are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of one prediction against one gold, in [0, 1]; repeated tokens count as often as both sides have
    them (a Counter intersection), as in the official script."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(score: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """A question's score: the best `score(prediction, gold)` over its gold answers (any one gold is a right answer;
    averaging would punish a prediction for not matching every annotator at once)."""
    if not golds:
        raise ValueError("a question needs at least one gold answer (SQuAD v1.1 questions all have one)")
    return max(score(prediction, gold) for gold in golds)


def check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Loud errors for the mistakes that would otherwise score silently: misaligned lists, a question without golds,
    and a bare string as the golds (it would be read as a list of one-character golds)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no questions to score")
    for index, golds in enumerate(references):
        if isinstance(golds, str):
            raise ValueError(f"references[{index}] is a string; each reference is a list of gold answers: [{golds!r}]")
        if len(golds) == 0:
            raise ValueError(f"references[{index}] has no gold answers")


def squad_scores(predictions: List[str], references: List[List[str]]) -> dict:
    """Corpus exact match and F1 on 0-100 (means over questions of the per-question maxima, times 100)."""
    check_inputs(predictions, references)
    pairs = list(zip(predictions, references))
    matches = sum(best_over_golds(exact_match, prediction, golds) for prediction, golds in pairs)
    overlaps = sum(best_over_golds(f1_score, prediction, golds) for prediction, golds in pairs)
    return {
        "exact_match": 100.0 * matches / len(pairs),
        "f1": 100.0 * overlaps / len(pairs),
        "num_questions": len(pairs),
    }


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Rajpurkar et al., 2016, SQuAD: 100,000+ Questions for Machine Comprehension of Text",
            inputs_description="predictions: list of str (one answer per question); references: list of lists of "
                               "str (each question's gold answers, at least one). Returns exact_match and f1 on "
                               "0-100 and num_questions.",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return squad_scores(predictions, references)
