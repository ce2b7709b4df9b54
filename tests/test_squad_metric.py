"""SQuAD v1.1 scoring: the official normalisation, EM and F1 on hand-computed cases (expected values worked out in the
comments, not by the code under test), max over golds, corpus means on 0-100, the `evaluate` metric agreeing with the
pure functions, the JSON reader and its errors, the atomic predictions writer, and the real dev set."""

import json

import pytest

from eval_suites.metrics.squad.squad import squad_scores
from eval_suites.squad import (METRIC_DIR, best_over_golds, exact_match, f1_score, load_squad, normalize_answer,
                               squad_metrics, write_predictions_jsonl)


def test_normalisation_case_punctuation_articles_whitespace():
    # lower "the big, red dog!" -> no punctuation "the big red dog" -> article out " big red dog" -> "big red dog"
    assert normalize_answer("The Big, Red DOG!") == "big red dog"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("  Denver\tBroncos \n") == "denver broncos"
    # Articles are whole words only.
    assert normalize_answer("theatre anthem Anna") == "theatre anthem anna"
    # Punctuation goes before articles: "the-end" -> "theend" (no article left to remove), "A.M." -> "am".
    assert normalize_answer("the-end") == "theend"
    assert normalize_answer("A.M.") == "am"
    # "The 'a' grade" -> "the a grade" -> both articles out -> "grade".
    assert normalize_answer("The 'a' grade") == "grade"
    # Only ASCII punctuation goes: the en dash stays, as in the official script.
    assert normalize_answer("Arab–Israeli") == "arab–israeli"
    assert exact_match("The Denver Broncos.", "denver broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_partial_overlap():
    # "the big red dog" -> [big, red, dog]; "a red dog barked" -> [red, dog, barked]; common {red, dog} = 2.
    # precision 2/3, recall 2/3, F1 = 2 * (2/3)(2/3) / (4/3) = 2/3.
    assert f1_score("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    assert exact_match("the big red dog", "a red dog barked") == 0.0
    # Repeated tokens count as often as both sides have them: [red, red, dog] vs [red, dog, dog, cat] share one red
    # and one dog = 2; precision 2/3, recall 2/4; F1 = 2 * (1/3) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
    assert f1_score("red red dog", "red dog dog cat") == pytest.approx(4 / 7)
    # Normalisation applies before tokenising: [denver, broncos] both sides -> 1.
    assert f1_score("The Denver Broncos!", "denver broncos") == 1.0


def test_empty_prediction_and_zero_overlap():
    # No prediction tokens -> no common token -> 0, and no division by zero.
    assert f1_score("", "Denver Broncos") == 0.0 and exact_match("", "Denver Broncos") == 0.0
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0
    assert exact_match("Carolina Panthers", "Denver Broncos") == 0.0
    # Only articles and punctuation: normalises to "" like the empty string.
    assert f1_score("the", "Denver Broncos") == 0.0
    # The official quirk: a gold that normalises to "" (the dev set has three "." golds) matches an empty prediction
    # exactly, but F1 needs a shared token and stays 0.
    assert exact_match("", ".") == 1.0 and f1_score("", ".") == 0.0


def test_max_over_golds():
    golds = ["Denver Broncos", "Denver Broncos team of the NFL"]
    # vs gold 1: [denver] / [denver, broncos]: P 1, R 1/2, F1 2/3. vs gold 2: [denver, broncos, team, of, nfl]:
    # P 1, R 1/5, F1 = 2 * (1/5) / (6/5) = 1/3. The max is 2/3: neither the mean (1/2) nor the last gold.
    assert best_over_golds(f1_score, "Denver", golds) == pytest.approx(2 / 3)
    assert best_over_golds(exact_match, "Denver", golds) == 0.0
    # One matching gold among several suffices.
    assert best_over_golds(exact_match, "the Broncos", ["Panthers", "Broncos", "Denver"]) == 1.0
    with pytest.raises(ValueError, match="at least one gold"):
        best_over_golds(f1_score, "Denver", [])


# Three questions: EM 1, 0, 0 and F1 1, 2/3, 0 (the cases above).
CORPUS = (["Denver Broncos", "the big red dog", ""],
          [["Denver Broncos", "Broncos"], ["a red dog barked"], ["Santa Clara"]])


def test_corpus_means_on_0_to_100():
    scores = squad_scores(*CORPUS)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)  # 33.33
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)  # 100 * 5/9 = 55.56
    assert scores["num_questions"] == 3


def test_metric_module_agrees_with_the_pure_functions():
    """`evaluate.load` imports its own copy of the script; its corpus numbers must be 100 x the means of the pure
    functions' per-question maxima, on the hand corpus and on cases with several golds and the quirks."""
    predictions = CORPUS[0] + ["Arab–Israeli conflict", "", "red red dog", "The-End"]
    references = CORPUS[1] + [["the Arab–Israeli conflict", "renewal"], ["."], ["red dog dog cat", "cat"], ["end"]]
    scores = squad_metrics(predictions, references)
    pairs = list(zip(predictions, references))
    assert scores["exact_match"] == pytest.approx(100 * sum(best_over_golds(exact_match, p, g) for p, g in pairs)
                                                  / len(pairs))
    assert scores["f1"] == pytest.approx(100 * sum(best_over_golds(f1_score, p, g) for p, g in pairs) / len(pairs))
    assert scores == pytest.approx(squad_scores(predictions, references))
    assert scores["num_questions"] == 7
    assert (METRIC_DIR / "squad.py").is_file()


def test_metric_input_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        squad_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no questions"):
        squad_metrics([], [])
    with pytest.raises(ValueError, match=r"references\[1\] has no gold answers"):
        squad_metrics(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match=r"references\[0\] is a string"):
        squad_scores(["Denver"], ["Denver"])  # would otherwise be golds "D", "e", "n", ...


def _squad_file(tmp_path, data, name="tiny.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _qa(question_id, question, *answers):
    return {"id": question_id, "question": question,
            "answers": [{"text": text, "answer_start": 0} for text in answers]}


TINY = {"version": "1.1", "data": [
    {"title": "Dogs", "paragraphs": [
        {"context": "The red dog barked.", "qas": [_qa("q1", "What barked?", "The red dog", "red dog"),
                                                   _qa("q2", "What colour?", "red")]},
        {"context": "Dogs sleep.", "qas": [_qa("q3", "What do dogs do?", "sleep")]}]},
    {"title": "Cats", "paragraphs": [{"context": "Cats purr.", "qas": [_qa("q4", "What purrs?", "Cats")]}]}]}


def test_load_squad_tiny_file(tmp_path):
    records = load_squad(_squad_file(tmp_path, TINY))
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4"]  # file order across paragraphs and articles
    assert records[0] == {"id": "q1", "title": "Dogs", "context": "The red dog barked.", "question": "What barked?",
                          "answers": ["The red dog", "red dog"]}
    assert records[2]["context"] == "Dogs sleep." and records[3]["title"] == "Cats"
    assert [r["id"] for r in load_squad(_squad_file(tmp_path, TINY), limit=3)] == ["q1", "q2", "q3"]
    assert load_squad(_squad_file(tmp_path, TINY), limit=0) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("data"), "has no 'data'"),
    (lambda d: d.update(data={"title": "x"}), r"data has type dict, expected list"),
    (lambda d: d["data"][0]["paragraphs"][1]["qas"][0].update(answers=[]),
     r"data\[0\]\.paragraphs\[1\]\.qas\[0\] \(id 'q3'\) has no answers"),
    (lambda d: d["data"][1]["paragraphs"][0].pop("context"), r"data\[1\]\.paragraphs\[0\] has no 'context'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(text=3),
     r"answers\[0\]\.text has type int, expected str"),
    (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="q1"), "id 'q1' repeats"),
    (lambda d: d["data"][0].pop("title"), r"data\[0\] has no 'title'"),
])
def test_load_squad_errors(tmp_path, mutate, message):
    data = json.loads(json.dumps(TINY))
    mutate(data)
    with pytest.raises(ValueError, match=message):
        load_squad(_squad_file(tmp_path, data))


def test_load_squad_not_json_and_bad_limit(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_squad(path)
    with pytest.raises(ValueError, match="tiny.json has type list, expected a JSON object"):
        load_squad(_squad_file(tmp_path, [TINY]))  # a list at the top, not the official object
    with pytest.raises(ValueError, match="limit"):
        load_squad(_squad_file(tmp_path, TINY), limit=-1)


def test_write_predictions_jsonl_is_atomic(tmp_path):
    path = tmp_path / "predictions.jsonl"
    records = [{"id": "q1", "prediction": "Arab–Israeli"}, {"id": "q2", "prediction": ""}]
    assert write_predictions_jsonl(path, records) == path
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records and "Arab–Israeli" in lines[0]
    # A failing write leaves the previous file as it was and no temporary file behind.
    with pytest.raises(TypeError):
        write_predictions_jsonl(path, [{"id": "q3", "prediction": object()}])
    with pytest.raises(ValueError, match=r"records\[0\] has type str"):
        write_predictions_jsonl(path, ["q3"])
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]
    write_predictions_jsonl(path, records[:1])  # replaces, does not append
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1


def test_real_dev_set_first_gold_scores_100(shared_dir):
    records = load_squad(shared_dir / "data" / "squad" / "dev-v1.1.json")
    assert len(records) == 10570  # SOURCE.md: 48 articles, 2,067 paragraphs, 10,570 questions
    assert len({r["title"] for r in records}) == 48
    assert len({(r["title"], r["context"]) for r in records}) == 2067
    assert records[0]["title"] == "Super_Bowl_50" and records[0]["answers"] == ["Denver Broncos"] * 3
    # Each question's first gold is one of its golds, so every maximum is 1 and both means are exactly 100. (The
    # dev set's three "." golds are never first; were one first, its F1 would be 0, see the empty-string quirk.)
    scores = squad_metrics([r["answers"][0] for r in records], [r["answers"] for r in records])
    assert scores == {"exact_match": 100.0, "f1": 100.0, "num_questions": 10570}
