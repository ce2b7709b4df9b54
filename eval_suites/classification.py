"""Generative classification: the class is the one under which the text is most likely (Bayes rule).

predicted class = argmax_y [log prior(y) + log p(text | y)], with log p from `eval_suites.likelihood`: exact for
causal LMs, a Monte-Carlo NELBO lower bound for masked diffusion LMs (MDLM, BD3-LM). Two ways to condition on y:

* label-conditioned (one model): context = the tokenizer's start prefix + the prompt `template.format(label=
  verbalizer[y])`, target = the text. Prompt and text are tokenized separately and concatenated, so the text's tokens
  are the same under every class and only the prompt differs. Classes whose prompts tokenize identically (e.g. both
  verbalizers become [UNK]) are refused: the model could not tell them apart.
* model per class ({class id: model}, one shared tokenizer): context = the start prefix only, target = the text, each
  class scored by its own model.

The start prefix is what the tokenizer itself puts before a text (e.g. [CLS] for BERT-style framing); a tokenizer
that adds nothing gets its BOS, else its CLS token, else (causal LMs only, as lm-evaluation-harness) its EOS. A
causal LM scores the first text token given this context, so it must not be empty. Trailing framing ([SEP], EOS) is
not scored: it is not part of the text.

Common random numbers: diffusion estimators draw their noise from one fixed table per seed. For MDLM it is indexed
from the start of the text, so every class sees the same draws on the text whatever its prompt; for BD3-LM, whose
blocks are absolute, from the start of the sequence, so the classes share draws when their contexts have the same
length (always in model-per-class mode; in label-conditioned mode when the prompts tokenize to the same length). This
removes most of the Monte Carlo variance from the comparison; the report says whether it held (`shared_noise`). For
BD3-LM a context that is not a whole number of blocks leaves its tail inside the text's first block, clean.

Priors are uniform unless given (e.g. train-set class counts; normalised to sum to 1). Ties in the posterior go to the
lowest class id and are counted. The metrics (accuracy, macro-F1, confusion matrix, distributions, majority baseline,
the collapse check) come from the local `evaluate` metric in `metrics/classification`, shared with other code.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import evaluate
import numpy as np

from eval_suites.blimp import unk_rate
from eval_suites.likelihood import build_likelihood, is_diffusion_model
from eval_suites.token_sequences import check_encoded
from modeling import diffusion_policy

METRIC_DIR = Path(__file__).with_name("metrics") / "classification"
DEFAULT_TEMPLATE = "{label}: "


@dataclass
class ClassScores:
    log_likelihoods: np.ndarray  # (items, classes) log p(text | class), nats; a lower bound for diffusion LMs
    standard_errors: np.ndarray  # (items, classes) Monte Carlo standard errors (0 for exact scores)
    log_priors: np.ndarray  # (classes,)

    @property
    def log_joint(self) -> np.ndarray:
        """log prior(y) + log p(text | y): the unnormalised log posterior the prediction maximises."""
        return self.log_likelihoods + self.log_priors[None, :]

    @property
    def predictions(self) -> List[int]:
        return [int(c) for c in self.log_joint.argmax(1)]  # ties: the lowest class id

    @property
    def num_ties(self) -> int:
        joint = self.log_joint
        return int(((joint == joint.max(1, keepdims=True)).sum(1) > 1).sum())


def check_label_names(label_names: Mapping[int, str]) -> List[str]:
    """The class names in id order; ids must be 0..C-1 (as a config's id2label) with at least two classes."""
    if sorted(label_names) != list(range(len(label_names))):
        raise ValueError(f"label ids must be 0..C-1 (as id2label), got {sorted(label_names)}")
    if len(label_names) < 2:
        raise ValueError(f"classification needs at least two classes, got {len(label_names)}")
    names = [str(label_names[c]) for c in range(len(label_names))]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct (the report is keyed by them), got {names}")
    return names


def log_priors(priors: Union[None, Mapping[int, float], Sequence[float]], num_classes: int) -> np.ndarray:
    """Log of the priors normalised to sum to 1 (so counts work as well as probabilities); uniform when None."""
    if priors is None:
        return np.full(num_classes, -math.log(num_classes))
    values = [priors[c] for c in range(num_classes)] if isinstance(priors, Mapping) else list(priors)
    if isinstance(priors, Mapping) and set(priors) != set(range(num_classes)):
        raise ValueError(f"priors must name every class 0..{num_classes - 1} and no other, got {sorted(priors)}")
    if len(values) != num_classes:
        raise ValueError(f"{len(values)} priors for {num_classes} classes")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"priors must be positive and finite (a zero prior rules its class out), got {values}")
    total = sum(values)
    return np.log(np.array(values, dtype=np.float64) / total)


def start_prefix(tokenizer, causal: bool) -> List[int]:
    """The ids the tokenizer puts before a text; else BOS, else CLS, else (causal only) EOS; else none."""
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for offset in range(len(framed) - len(bare) + 1):
        if bare and framed[offset:offset + len(bare)] == bare:
            if offset:
                return list(framed[:offset])
            break
    fallbacks = [tokenizer.bos_token_id, tokenizer.cls_token_id] + ([tokenizer.eos_token_id] if causal else [])
    return [next(i for i in fallbacks if i is not None)] if any(i is not None for i in fallbacks) else []


class GenerativeClassifier:
    """Scores texts under every class, label-conditioned (one model) or with one model per class (a dict)."""

    def __init__(self, models, tokenizer, label_names: Mapping[int, str], template: str = DEFAULT_TEMPLATE,
                 verbalizers: Optional[Mapping[int, str]] = None, priors=None, num_samples: int = 32, seed: int = 0,
                 token_budget: int = 16384, truncate: bool = False):
        """`truncate`: cut texts too long for the model (with the longest class context) to fit, the same cut under
        every class, and count them in the report; without it such a text is an error."""
        self.names = check_label_names(label_names)
        self.truncate, self.num_truncated = truncate, 0
        self.tokenizer, self.num_samples, self.seed = tokenizer, num_samples, seed
        self.per_class = isinstance(models, Mapping)
        if self.per_class and set(models) != set(range(len(self.names))):
            raise ValueError(f"model per class: need one model for each class id 0..{len(self.names) - 1}, "
                             f"got {sorted(models)}")
        self.models = [models[c] for c in range(len(self.names))] if self.per_class else [models]
        self._check_models_agree()
        self.diffusion = is_diffusion_model(self.models[0])
        for model in self.models:
            check_encoded(model, tokenizer, [])  # the tokenizer fits every model's vocabulary
        self.log_priors = log_priors(priors, len(self.names))
        self.prefix = start_prefix(tokenizer, causal=not self.diffusion)
        self.template = None if self.per_class else template
        if verbalizers is not None and set(verbalizers) != set(range(len(self.names))):
            raise ValueError(f"verbalizers must give a word for every class id 0..{len(self.names) - 1}, got "
                             f"{sorted(verbalizers)}")
        self.verbalizers = None if self.per_class else \
            [str((verbalizers or label_names)[c]) for c in range(len(self.names))]
        self.contexts = [list(self.prefix) for _ in self.names] if self.per_class else self._prompt_contexts()
        if not self.diffusion and not all(self.contexts):
            raise ValueError("a causal LM needs a context to score the first text token, but the tokenizer has no "
                             "framing, BOS, CLS nor EOS token and the prompt is empty")
        self.estimators = [build_likelihood(model, num_samples=num_samples, seed=seed, token_budget=token_budget)
                           for model in self.models]

    def _check_models_agree(self) -> None:
        """Per-class scores are compared with each other: they must be the same kind of number (exact vs bound) and,
        for diffusion models, come from the same noise table (same length, block size)."""
        keys = {(is_diffusion_model(m), getattr(m.config, "model_type", None),
                 getattr(m.config, "max_position_embeddings", None), getattr(m.config, "block_size", None))
                for m in self.models}
        if len(keys) > 1:
            raise ValueError("the class models differ in kind, model_type, max_position_embeddings or block_size "
                             f"({sorted(map(str, keys))}); their scores would not be comparable")

    def _prompt_contexts(self) -> List[List[int]]:
        if "{label}" not in self.template:
            raise ValueError(f"template {self.template!r} has no {{label}} field: every class would get one prompt")
        contexts = []
        for c, verbalizer in enumerate(self.verbalizers):
            prompt = self.tokenizer(self.template.format(label=verbalizer), add_special_tokens=False)["input_ids"]
            context = list(self.prefix) + list(prompt)
            for other in range(c):
                if contexts[other] == context:
                    raise ValueError(f"classes {self.names[other]!r} and {self.names[c]!r} get identical prompt "
                                     f"tokens {self.tokenizer.convert_ids_to_tokens(context)} (unknown words?): the "
                                     "model cannot tell them apart")
            contexts.append(context)
        return contexts

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        """The text ids (no special tokens), checked: none empty, none too long for its context and model."""
        targets = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        for index, ids in enumerate(targets):
            if not ids:
                raise ValueError(f"text {index} ({texts[index]!r}) tokenizes to nothing: there is nothing to score")
        if self.truncate:
            room = self._text_room()
            self.num_truncated += sum(len(ids) > room for ids in targets)
            targets = [ids[:room] for ids in targets]
        longest = max(range(len(targets)), key=lambda i: len(targets[i]), default=None)
        models = self.models if self.per_class else self.models * len(self.names)
        for c, (context, model) in enumerate(zip(self.contexts, models)):
            limit = getattr(model.config, "max_position_embeddings", None)
            if limit is not None and longest is not None and len(context) + len(targets[longest]) > limit:
                raise ValueError(f"text {longest} has {len(targets[longest])} tokens; with the {len(context)} context "
                                 f"tokens of class {self.names[c]!r} that is more than the model's "
                                 f"max_position_embeddings ({limit})")
        return targets

    def _text_room(self) -> int:
        """Text tokens that fit after every class's context in its model."""
        models = self.models if self.per_class else self.models * len(self.names)
        limits = [getattr(model.config, "max_position_embeddings", None) for model in models]
        room = [limit - len(context) for limit, context in zip(limits, self.contexts) if limit is not None]
        if room and min(room) < 1:
            raise ValueError("a class context leaves no room for the text in the model")
        return min(room) if room else 1 << 30

    def score(self, texts: Sequence[str]) -> ClassScores:
        """log p(text | class) for every text and class (one batched call per model)."""
        targets, count = self.encode(texts), len(texts)
        if self.per_class:
            estimates = [self.estimators[c].log_likelihood(targets, [self.contexts[c]] * count)
                         for c in range(len(self.names))]
        else:
            flat = self.estimators[0].log_likelihood(targets * len(self.names),
                                                     [context for context in self.contexts for _ in range(count)])
            estimates = [flat[c * count:(c + 1) * count] for c in range(len(self.names))]
        values = np.array([[e.log_likelihood for e in column] for column in estimates]).T
        errors = np.array([[e.standard_error for e in column] for column in estimates]).T
        return ClassScores(values, errors, self.log_priors)

    def describe(self) -> dict:
        """How the scores were made, for the report (JSON-serialisable)."""
        lengths = {len(context) for context in self.contexts}
        description = {
            "mode": "model per class" if self.per_class else "label-conditioned",
            "score": (f"Monte-Carlo NELBO lower bound on log p(text | class), {self.num_samples} draws, seed "
                      f"{self.seed}" if self.diffusion else "exact log p(text | class) under a causal LM"),
            "reduction": "sum of natural-log token probabilities over the text tokens",
            "num_samples": self.num_samples if self.diffusion else None,
            "seed": self.seed if self.diffusion else None,
            "start_prefix": self.tokenizer.convert_ids_to_tokens(self.prefix),
            "priors": {name: float(math.exp(p)) for name, p in zip(self.names, self.log_priors)},
            # None: exact scores, no noise. MDLM's noise follows the target whatever the context length.
            "shared_noise": (len(lengths) == 1 or diffusion_policy(self.models[0]).noise_follows_target)
            if self.diffusion else None,
            "truncated_texts": self.num_truncated,
        }
        if not self.per_class:
            description.update(template=self.template, verbalizers=dict(zip(self.names, self.verbalizers)),
                               prompt_tokens={name: self.tokenizer.convert_ids_to_tokens(context)
                                              for name, context in zip(self.names, self.contexts)})
        return description


def classification_metrics(predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str],
                           collapse_margin: float = 0.25) -> dict:
    """The shared metric (`metrics/classification`): accuracy, macro-F1, confusion matrix, distributions, collapse."""
    metric = evaluate.load(str(METRIC_DIR))
    return metric.compute(predictions=list(predictions), references=list(references), label_names=list(label_names),
                          collapse_margin=collapse_margin)


def evaluate_classification(classifier: GenerativeClassifier, texts: Sequence[str], labels: Sequence[int],
                            collapse_margin: float = 0.25) -> dict:
    """Classify `texts` and report the metrics against `labels` (class ids) with how the scores were made."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no texts to classify")
    for index, label in enumerate(labels):
        if label not in range(len(classifier.names)):
            raise ValueError(f"label {label!r} of item {index} is outside the label set "
                             f"{dict(enumerate(classifier.names))}")
    scores = classifier.score(texts)
    result = classification_metrics(scores.predictions, labels, classifier.names, collapse_margin)
    result.update(classifier.describe())
    result.update(
        mean_standard_error=float(scores.standard_errors.mean()),
        mean_standard_error_per_class={name: float(v) for name, v in zip(classifier.names,
                                                                       scores.standard_errors.mean(0))},
        num_ties=scores.num_ties, unk_rate=unk_rate(classifier.tokenizer, list(texts)),
    )
    return result


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _name(name: str) -> str:
    return name.replace("|", "\\|")


def _scoring_line(result: dict) -> str:
    """How the classes were scored: a generative classifier's scores, or a fine-tuned head."""
    if "score" not in result:
        return f"Mode: {result.get('mode', 'classifier head')}."
    return (f"Mode: {result['mode']}; score: {result['score']} ({result['reduction']}); shared noise across classes: "
            f"{'n/a (exact scores)' if result['shared_noise'] is None else result['shared_noise']}. Priors: "
            + ", ".join(f"{_name(n)} {p:.4f}" for n, p in result["priors"].items())
            + f". Mean standard error of the class scores {result['mean_standard_error']:.4f}; ties "
            f"{result['num_ties']} (lowest class id wins); UNK rate {result['unk_rate']:.4f}.")


def markdown_report(result: dict, title: str = "Generative classification") -> str:
    names = result["label_names"]
    verdict = (f"**COLLAPSED**: {result['collapse_reason']}." if result["collapsed"] else "No collapse.") + \
        f" (Rule: {result['collapse_rule']}.)"
    lines = [
        f"## {title}", "",
        f"Accuracy **{result['accuracy']:.4f}**, macro-F1 **{result['macro_f1']:.4f}** (over "
        f"{result['macro_f1_num_classes']} classes) on {result['num_items']} items; majority baseline "
        f"{result['majority_baseline_accuracy']:.4f} (always '{_name(result['majority_class'])}').", "",
        verdict, "",
        _scoring_line(result), "",
        "| Class | Gold | Gold share | Predicted | Predicted share | Precision | Recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        gold, predicted, scores = (result["gold_distribution"][name], result["predicted_distribution"][name],
                                   result["per_class"][name])
        lines.append(f"| {_name(name)} | {gold['count']} | {gold['share']:.4f} | {predicted['count']} | "
                     f"{predicted['share']:.4f} | {_cell(scores['precision'])} | {_cell(scores['recall'])} | "
                     f"{_cell(scores['f1'])} |")
    lines += ["", "Confusion matrix (rows gold, columns predicted):", "",
              "| gold \\ predicted | " + " | ".join(map(_name, names)) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, result["confusion_matrix"]["matrix"]):
        lines.append(f"| {_name(name)} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def parse_label_spec(spec: str) -> Dict[str, str]:
    """'0=negative,1=positive' -> {'0': 'negative', '1': 'positive'}: raw label value -> class name (verbalizer),
    in class-id order."""
    labels = {}
    for part in spec.split(","):
        key, sep, name = part.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise ValueError(f"label spec {spec!r}: expected value=name pairs separated by commas, got {part!r}")
        if key.strip() in labels:
            raise ValueError(f"label spec {spec!r} names the value {key.strip()!r} twice")
        labels[key.strip()] = name.strip()
    return labels


def _read_records(path: Path, column_names: Optional[Sequence[str]] = None) -> List[dict]:
    """Records of a TSV/CSV (with a header row, or headerless with `column_names`), JSON or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            # GLUE-style TSVs quote nothing: a literal '"' inside a sentence must stay text.
            options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            return list(csv.DictReader(handle, fieldnames=list(column_names) if column_names else None, **options))
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # columns -> lists
            return [dict(zip(data, row)) for row in zip(*data.values())]
        return data
    raise ValueError(f"{path}: unknown data format {suffix!r}; use .tsv, .csv, .json or .jsonl")


def load_examples(path, text_column: str, label_column: str, label_values: Sequence[str],
                  limit: Optional[int] = None, text_pair_column: Optional[str] = None,
                  column_names: Optional[Sequence[str]] = None) -> Tuple[list, List[int]]:
    """(texts, class ids) from a TSV/CSV/JSON/JSONL file; a label's class id is its position in `label_values`
    (raw values as written in the file, compared as strings). Surrounding whitespace of texts is stripped. With
    `text_pair_column` each text is a (text, pair) tuple (e.g. premise, hypothesis); `column_names` names the columns
    of a headerless TSV/CSV (XNLI)."""
    path = Path(path)
    records = _read_records(path, column_names)
    if not all(isinstance(record, dict) for record in records):
        raise ValueError(f"{path}: expected one record (an object with named fields) per example")
    wanted = {text_column, label_column} | ({text_pair_column} if text_pair_column else set())
    if records and not wanted <= set(records[0]):
        raise ValueError(f"{path} has columns {sorted(map(str, records[0]))}, not all of {sorted(wanted)}")
    class_of = {str(value): c for c, value in enumerate(label_values)}
    texts, labels = [], []
    for index, record in enumerate(records[:limit] if limit is not None else records):
        if record.get(text_column) is None or record.get(label_column) is None:
            raise ValueError(f"{path} row {index + 1} lacks its {text_column!r} or {label_column!r} value")
        raw = str(record[label_column]).strip()
        if raw not in class_of:
            raise ValueError(f"{path} row {index + 1}: label {raw!r} is outside the label set {list(class_of)}")
        text = str(record[text_column]).strip()
        if text_pair_column:
            if record.get(text_pair_column) is None:
                raise ValueError(f"{path} row {index + 1} lacks its {text_pair_column!r} value")
            text = (text, str(record[text_pair_column]).strip())
        texts.append(text)
        labels.append(class_of[raw])
    if not texts:
        raise ValueError(f"{path} holds no examples")
    return texts, labels
