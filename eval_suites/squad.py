"""SQuAD v1.1 scoring: the official exact match and F1 (local `metrics/squad`, loaded by path so nothing is fetched
from the Hub), a reader for the official JSON (`../shared/data/squad/dev-v1.1.json`) and an atomic JSONL writer for
predictions.

The pure scoring functions live in the metric script and are re-exported here: `evaluate.load` copies that script into
its modules cache and imports it on its own, so it must not depend on this package, and one definition serves both.
"""

import json
import os
import secrets
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import evaluate

from eval_suites.metrics.squad.squad import best_over_golds, check_inputs, exact_match, f1_score, normalize_answer

METRIC_DIR = Path(__file__).with_name("metrics") / "squad"

__all__ = ["METRIC_DIR", "best_over_golds", "exact_match", "f1_score", "load_squad", "normalize_answer",
           "squad_metrics", "write_predictions_jsonl"]


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """{"exact_match", "f1" (both 0-100, as the official script reports them), "num_questions"}: `predictions[i]`
    is scored against every gold in `references[i]` and keeps the best."""
    check_inputs(predictions, references)  # our messages, before `evaluate` words the same mistakes its own way
    metric = evaluate.load(str(METRIC_DIR))
    return metric.compute(predictions=list(predictions), references=[list(golds) for golds in references])


def _field(node, key: str, kind: type, where: str):
    """`node[key]`, checked to be a `kind`; a ValueError naming the place otherwise (a malformed file should say
    where it breaks, not fail later with a KeyError)."""
    if not isinstance(node, dict):
        raise ValueError(f"{where} has type {type(node).__name__}, expected a JSON object")
    if key not in node:
        raise ValueError(f"{where} has no '{key}'")
    value = node[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}.{key} has type {type(value).__name__}, expected {kind.__name__}")
    return value


def _questions(dataset, source: str) -> Iterator[Tuple[str, str, str, dict]]:
    """(where, title, context, qa) for every question, in file order; `where` locates it, e.g.
    "data[3].paragraphs[0].qas[7]", for error messages."""
    for a, article in enumerate(_field(dataset, "data", list, source)):
        where = f"{source}: data[{a}]"
        title = _field(article, "title", str, where)
        for p, paragraph in enumerate(_field(article, "paragraphs", list, where)):
            context = _field(paragraph, "context", str, f"{where}.paragraphs[{p}]")
            for q, qa in enumerate(_field(paragraph, "qas", list, f"{where}.paragraphs[{p}]")):
                yield f"{where}.paragraphs[{p}].qas[{q}]", title, context, qa


def _record(where: str, title: str, context: str, qa) -> dict:
    question_id = _field(qa, "id", str, where)
    where = f"{where} (id {question_id!r})"
    answers = _field(qa, "answers", list, where)
    if not answers:
        raise ValueError(f"{where} has no answers (every SQuAD v1.1 question has at least one; a SQuAD 2.0 "
                         "unanswerable question has none)")
    texts = [_field(answer, "text", str, f"{where}.answers[{i}]") for i, answer in enumerate(answers)]
    return {"id": question_id, "title": title, "context": context,
            "question": _field(qa, "question", str, where), "answers": texts}


def load_squad(path, limit: Optional[int] = None) -> List[dict]:
    """The questions of an official-format SQuAD JSON file, in file order, as {"id", "title", "context", "question",
    "answers": [gold texts, duplicates kept]}. With `limit`, the first `limit` questions (only those are validated).
    Raises ValueError naming the problem and its place: not JSON, no 'data', a question without answers, a
    duplicated id (predictions are matched to questions by id)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    try:
        dataset = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    records, seen = [], {}
    for where, title, context, qa in _questions(dataset, str(path)):
        if limit is not None and len(records) >= limit:
            break
        record = _record(where, title, context, qa)
        if record["id"] in seen:
            raise ValueError(f"{where}: id {record['id']!r} repeats {seen[record['id']]}")
        seen[record["id"]] = where
        records.append(record)
    return records


def write_predictions_jsonl(path, records: Sequence[dict]) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept as is). Written to a temporary file in the same folder and
    moved over `path` with os.replace, so a reader never sees half a file and a failure leaves any old file intact."""
    path = Path(path)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"records[{index}] has type {type(record).__name__}, expected dict (one JSON object)")
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)  # fails before any file
    # Same folder: os.replace is atomic only within one file system. Mode "x" (rather than mkstemp's 0600) leaves
    # the permissions to the umask, as a plain open() of `path` would.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
