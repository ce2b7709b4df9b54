"""BLiMP accuracy as a local `evaluate` metric: `evaluate.load("eval_suites/metrics/blimp")` works offline.

A pair counts as correct when the grammatical sentence scores strictly higher than the ungrammatical one (ties are
wrong). The headline `accuracy` is the mean of per-paradigm accuracies, as in the BLiMP paper and the BabyLM
pipelines; `micro_accuracy` pools all pairs.
"""

from collections import defaultdict

import datasets
import evaluate

_CITATION = """@article{warstadt2020blimp,
  title={BLiMP: The Benchmark of Linguistic Minimal Pairs for English},
  author={Warstadt, Alex and Parrish, Alicia and Liu, Haokun and Mohananey, Anhad and Peng, Wei and Wang,
          Sheng-Fu and Bowman, Samuel R.},
  journal={Transactions of the Association for Computational Linguistics}, volume={8}, pages={377--392}, year={2020}
}"""


class Blimp(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy on BLiMP-style minimal pairs from sentence log-likelihoods.",
            citation=_CITATION,
            inputs_description="good_scores, bad_scores: sentence log-likelihoods; paradigms, phenomena: labels.",
            features=datasets.Features({
                "good_scores": datasets.Value("float64"), "bad_scores": datasets.Value("float64"),
                "paradigms": datasets.Value("string"), "phenomena": datasets.Value("string"),
            }),
        )

    def _compute(self, good_scores, bad_scores, paradigms, phenomena):
        by_paradigm, phenomenon_of = defaultdict(list), {}
        for good, bad, paradigm, phenomenon in zip(good_scores, bad_scores, paradigms, phenomena):
            by_paradigm[paradigm].append(good > bad)
            phenomenon_of[paradigm] = phenomenon
        per_paradigm = {name: sum(hits) / len(hits) for name, hits in sorted(by_paradigm.items())}
        by_phenomenon = defaultdict(list)
        for name, accuracy in per_paradigm.items():
            by_phenomenon[phenomenon_of[name]].append(accuracy)
        return {
            "accuracy": sum(per_paradigm.values()) / len(per_paradigm),
            "micro_accuracy": sum(sum(h) for h in by_paradigm.values()) / len(good_scores),
            "per_paradigm": per_paradigm,
            "per_phenomenon": {name: sum(v) / len(v) for name, v in sorted(by_phenomenon.items())},
            "num_pairs": len(good_scores),
            "num_ties": sum(int(g == b) for g, b in zip(good_scores, bad_scores)),
        }
