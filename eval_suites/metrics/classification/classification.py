"""Classification metrics as a local `evaluate` metric: `evaluate.load("eval_suites/metrics/classification")` works
offline. One definition shared by the generative-classification suite and any trainer that reports on classes.

Inputs: `predictions` and `references`, class ids in [0, C); `label_names`, the C class names (id i is
`label_names[i]`); optionally `collapse_margin` (default 0.25).

Definitions (per class c, TP = items of gold c predicted c, gold = items of gold c, predicted = items predicted c):
* precision = TP / predicted, `None` when the class is never predicted; recall = TP / gold, `None` when it never
  occurs in the gold labels.
* F1 = 2 TP / (gold + predicted): the harmonic mean of precision and recall where both exist, and 0 when only one
  exists (then TP = 0). It is `None` for a class with no gold and no predictions, and such classes are left out of
  the macro average (they say nothing about the classifier on this data); every other class, including one that is
  never predicted, counts. `macro_f1_num_classes` says how many classes were averaged.
* majority baseline = the gold share of the most frequent gold class: the accuracy of always answering it.

Collapse (a failure, not a statistic): the classifier answers one class far more often than it occurs. `collapsed` is
true when (a) the gold labels hold two or more classes and every prediction is the same class, or (b) some class's
predicted share exceeds its gold share by more than `collapse_margin` (absolute; default 0.25). An always-class-0
classifier on data that is 57.8% class 0 trips both rules (its accuracy is exactly the majority baseline). Rule (b)
compares shares, so on a handful of items one error can move a share by more than the margin: judge small sets with
that in mind.
"""

from typing import List, Optional

import datasets
import evaluate

DEFAULT_COLLAPSE_MARGIN = 0.25
COLLAPSE_RULE = ("collapsed when the gold labels hold two or more classes and every prediction is one class, or when "
                 "a class's predicted share exceeds its gold share by more than {margin} (absolute)")


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return numerator / denominator if denominator else None


def _check_ids(name: str, values: List[int], num_classes: int) -> None:
    for index, value in enumerate(values):
        if not 0 <= value < num_classes:
            raise ValueError(f"{name}[{index}] = {value} is not a class id in [0, {num_classes}) (label_names has "
                             f"{num_classes} names)")


def _distribution(counts: List[int], names: List[str]) -> dict:
    total = sum(counts)
    return {name: {"count": count, "share": count / total} for name, count in zip(names, counts)}


def collapse_check(gold_counts: List[int], predicted_counts: List[int], names: List[str],
                   margin: float = DEFAULT_COLLAPSE_MARGIN) -> tuple:
    """(collapsed, reason): see the module docstring for the rule. The reason names the class and its shares."""
    total = sum(gold_counts)
    excess = [(p - g) / total for g, p in zip(gold_counts, predicted_counts)]
    worst = max(range(len(names)), key=lambda c: excess[c])
    shares = (f"'{names[worst]}' is predicted for {predicted_counts[worst] / total:.1%} of items but is "
              f"{gold_counts[worst] / total:.1%} of the gold labels")
    gold_classes = sum(count > 0 for count in gold_counts)
    if gold_classes >= 2 and predicted_counts[worst] == total:
        return True, f"every prediction is one class although the gold labels hold {gold_classes}: {shares}"
    if excess[worst] > margin:
        return True, f"{shares} (excess {excess[worst]:.3f} > margin {margin})"
    return False, ""


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy, macro-F1, confusion matrix, class distributions and a collapse check for "
                        "single-label classification.",
            citation="",
            inputs_description="predictions, references: class ids in [0, C); label_names: the C class names; "
                               "collapse_margin: the predicted-minus-gold share that counts as collapse (0.25).",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, label_names=None, collapse_margin=DEFAULT_COLLAPSE_MARGIN):
        if label_names is None:
            raise ValueError("label_names is required: the class names, id i named label_names[i]")
        names = [str(name) for name in label_names]
        if len(set(names)) != len(names):
            raise ValueError(f"label_names must be distinct, got {names}")
        if not references:
            raise ValueError("no items: classification metrics need at least one prediction and reference")
        _check_ids("predictions", predictions, len(names))
        _check_ids("references", references, len(names))
        matrix = [[0] * len(names) for _ in names]  # rows gold, columns predicted
        for gold, predicted in zip(references, predictions):
            matrix[gold][predicted] += 1
        gold_counts = [sum(row) for row in matrix]
        predicted_counts = [sum(row[c] for row in matrix) for c in range(len(names))]
        per_class, f1_values = {}, []
        for c, name in enumerate(names):
            hits = matrix[c][c]
            f1 = _ratio(2 * hits, gold_counts[c] + predicted_counts[c])
            per_class[name] = {"precision": _ratio(hits, predicted_counts[c]), "recall": _ratio(hits, gold_counts[c]),
                               "f1": f1, "support": gold_counts[c], "predicted": predicted_counts[c]}
            if f1 is not None:
                f1_values.append(f1)
        collapsed, reason = collapse_check(gold_counts, predicted_counts, names, collapse_margin)
        majority = max(range(len(names)), key=lambda c: gold_counts[c])
        return {
            "accuracy": sum(matrix[c][c] for c in range(len(names))) / len(references),
            "macro_f1": sum(f1_values) / len(f1_values),
            "macro_f1_num_classes": len(f1_values),
            "num_items": len(references),
            "label_names": names,
            "confusion_matrix": {"rows": "gold", "columns": "predicted", "labels": names, "matrix": matrix},
            "per_class": per_class,
            "gold_distribution": _distribution(gold_counts, names),
            "predicted_distribution": _distribution(predicted_counts, names),
            "majority_class": names[majority],
            "majority_baseline_accuracy": gold_counts[majority] / len(references),
            "collapsed": collapsed,
            "collapse_reason": reason,
            "collapse_rule": COLLAPSE_RULE.format(margin=collapse_margin),
        }
