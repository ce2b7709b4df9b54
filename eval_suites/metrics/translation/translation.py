"""Translation metrics as a local `evaluate` metric: `evaluate.load("eval_suites/metrics/translation")` works offline.

Inputs: `predictions` (hypothesis strings) and `references` (one reference string per hypothesis).

* `bleu`, `chrf`: sacrebleu's **corpus** BLEU (13a tokenisation, exponential smoothing off, as WMT reports it) and
  corpus chrF (character n-grams up to 6, beta 2), 0-100. Not an average of sentence scores: a corpus score pools
  the n-gram counts of all segments, an average of sentence BLEU does not and is not comparable to published numbers.
* `exact_match`: share of hypotheses equal to their reference after stripping surrounding whitespace.
* `word_accuracy`: 1 - word edit distance / reference words (1 - WER, floored at 0), pooled over the corpus.
* `char_accuracy`: the same on characters (1 - CER).
"""

from typing import List

import datasets
import evaluate
import sacrebleu


def edit_distance(hypothesis: List[str], reference: List[str]) -> int:
    """Levenshtein distance between two sequences (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(reference) + 1))
    for i, token in enumerate(hypothesis, start=1):
        current = [i]
        for j, target in enumerate(reference, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != target)))
        previous = current
    return previous[-1]


def pooled_accuracy(pairs) -> float:
    """1 - (sum of edit distances) / (sum of reference lengths), floored at 0; 1.0 for empty references."""
    errors = sum(edit_distance(hypothesis, reference) for hypothesis, reference in pairs)
    length = sum(len(reference) for _, reference in pairs)
    return max(0.0, 1 - errors / length) if length else 1.0


def translation_scores(predictions: List[str], references: List[str]) -> dict:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no translations to score")
    hypotheses = [p.strip() for p in predictions]
    targets = [r.strip() for r in references]
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [targets]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [targets]).score,
        "exact_match": sum(h == t for h, t in zip(hypotheses, targets)) / len(targets),
        "word_accuracy": pooled_accuracy([(h.split(), t.split()) for h, t in zip(hypotheses, targets)]),
        "char_accuracy": pooled_accuracy([(list(h), list(t)) for h, t in zip(hypotheses, targets)]),
        "num_segments": len(targets),
    }


class Translation(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Post, 2018, A Call for Clarity in Reporting BLEU Scores (sacrebleu)",
            inputs_description="predictions: list of str; references: list of str (one reference each)",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return translation_scores(predictions, references)
