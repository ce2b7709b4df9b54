"""Generative classification: metrics against hand computations, the collapse check, causal scores against a brute-force
log-likelihood, per-class MDLMs that learn their class, common random numbers, data loading and the CLI."""

import copy
import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from eval_suites.__main__ import COLLAPSE_EXIT_CODE
from eval_suites.__main__ import main as eval_cli
from eval_suites.classification import (
    GenerativeClassifier,
    classification_metrics,
    evaluate_classification,
    load_examples,
    markdown_report,
    parse_label_spec,
)
from eval_suites.likelihood import build_likelihood
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from tests.modeling_common import tiny_tokenizer

VOCAB = 40
CLASS_WORDS = {0: range(10, 18), 1: range(20, 28)}  # disjoint vocabularies: a separable toy task


def toy_texts(label, count, seed):
    generator = torch.Generator().manual_seed(seed)
    words = list(CLASS_WORDS[label])
    lengths = torch.randint(3, 7, (count,), generator=generator)
    return [" ".join(f"w{words[i]}" for i in torch.randint(0, len(words), (int(n),), generator=generator))
            for n in lengths]


def tiny_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=32, n_head=2, n_positions=32, bos_token_id=2,
                        eos_token_id=3)
    return GPT2LMHeadModel(config).eval()


def tiny_mdlm(seed=0, max_length=32):
    torch.manual_seed(seed)
    config = MdlmConfig(vocab_size=VOCAB, mask_token_id=4, pad_token_id=0, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, cond_dim=8, max_position_embeddings=max_length,
                        timestep_embedding_size=16, zero_init_modulation=False)
    return MdlmForMaskedDiffusionLM(config).eval()


def train_on(model, texts, tokenizer, steps=40, seed=0):
    """A few NELBO steps on `[CLS] text` sequences: enough for the model to prefer its class's words."""
    generator = torch.Generator().manual_seed(seed)
    rows = [[tokenizer.cls_token_id] + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    width = max(map(len, rows))
    clean = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    labels = clean.masked_fill(attention == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small gain nothing from threads; on a busy machine they cost seconds
    try:
        for _ in range(steps):
            t = torch.rand(len(rows), generator=generator) * 0.999 + 1e-3
            masked = (torch.rand(clean.shape, generator=generator) < t[:, None]) & (attention == 1)
            masked[:, 0] = False  # the [CLS] context is never noised when scoring either
            noisy = clean.masked_fill(masked, model.config.mask_token_id)
            loss = model(input_ids=noisy, attention_mask=attention, timesteps=t, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(VOCAB)  # [PAD] [UNK] [CLS] [SEP] [MASK]=4, then w5 .. w39; adds no framing itself


@pytest.fixture(scope="module")
def class_models(tokenizer):
    return {label: train_on(tiny_mdlm(seed=label), toy_texts(label, 32, seed=10 + label), tokenizer, seed=label)
            for label in CLASS_WORDS}


# ---- the metric ----

def test_metric_matches_hand_computation():
    names = ["a", "b", "c", "unused"]
    references = [0, 0, 0, 1, 1, 2]
    predictions = [0, 1, 0, 1, 0, 2]
    result = classification_metrics(predictions, references, names)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # a: TP 2, gold 3, predicted 3 -> P = R = F1 = 2/3; b: TP 1, gold 2, predicted 2 -> 1/2; c: 1; unused: excluded
    assert result["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert result["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    assert result["per_class"]["c"]["f1"] == pytest.approx(1.0)
    assert result["per_class"]["unused"] == {"precision": None, "recall": None, "f1": None, "support": 0,
                                             "predicted": 0}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3) and result["macro_f1_num_classes"] == 3
    assert result["confusion_matrix"]["matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert result["confusion_matrix"]["labels"] == names
    assert result["gold_distribution"]["a"] == {"count": 3, "share": 0.5}
    assert result["gold_distribution"]["c"]["share"] == pytest.approx(1 / 6)
    assert result["predicted_distribution"]["a"]["count"] == 3 and result["predicted_distribution"]["b"]["count"] == 2
    assert result["majority_class"] == "a" and result["majority_baseline_accuracy"] == pytest.approx(0.5)
    assert result["num_items"] == 6 and not result["collapsed"]
    json.dumps(result)  # JSON-serialisable as it comes


def test_class_predicted_but_never_gold_counts_with_f1_zero():
    result = classification_metrics([0, 1], [0, 0], ["a", "b"])
    # a: P = 1, R = 1/2, F1 = 2/3; b: predicted once, never gold: precision 0, recall undefined, F1 0 (counted)
    assert result["per_class"]["b"] == {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0, "predicted": 1}
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0) / 2) and result["macro_f1_num_classes"] == 2


def test_collapse_fires_for_always_majority_predictor():
    references = [0] * 289 + [1] * 211  # 57.8% class 0
    result = classification_metrics([0] * 500, references, ["negative", "positive"])
    assert result["accuracy"] == pytest.approx(0.578) == result["majority_baseline_accuracy"]
    assert result["collapsed"]
    assert "every prediction is one class" in result["collapse_reason"] and "'negative'" in result["collapse_reason"]
    assert result["per_class"]["positive"]["recall"] == 0.0 and result["macro_f1"] == pytest.approx((2 * 289 / 789) / 2)


def test_collapse_does_not_fire_for_a_good_balanced_predictor():
    references = [0] * 289 + [1] * 211
    predictions = [0] * 260 + [1] * 29 + [1] * 190 + [0] * 21  # 90% right, errors in both directions
    result = classification_metrics(predictions, references, ["negative", "positive"])
    assert result["accuracy"] == pytest.approx(450 / 500) and not result["collapsed"]
    assert result["collapse_reason"] == ""
    balanced = classification_metrics([0, 1] * 50, [0, 1] * 45 + [1, 0] * 5, ["negative", "positive"])
    assert balanced["accuracy"] == pytest.approx(0.9) and not balanced["collapsed"]


def test_collapse_margin_is_on_share_excess():
    references = [0] * 50 + [1] * 50
    skewed = classification_metrics([0] * 80 + [1] * 20, references, ["a", "b"])  # excess 0.30 > 0.25
    assert skewed["collapsed"] and "excess 0.300" in skewed["collapse_reason"]
    milder = classification_metrics([0] * 70 + [1] * 30, references, ["a", "b"])  # excess 0.20
    assert not milder["collapsed"]
    assert classification_metrics([0] * 70 + [1] * 30, references, ["a", "b"], collapse_margin=0.1)["collapsed"]


def test_metric_rejects_ids_outside_the_label_set():
    with pytest.raises(ValueError, match=r"references\[1\] = 2 is not a class id"):
        classification_metrics([0, 1], [0, 2], ["a", "b"])


# ---- the suite with a causal LM ----

def brute_force_log_likelihood(model, context, target):
    ids = list(context) + list(target)
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(log_probs[t - 1, ids[t]].item() for t in range(len(context), len(ids)))


def test_causal_scores_equal_hand_computation(tokenizer):
    model = tiny_gpt2()
    classifier = GenerativeClassifier(model, tokenizer, {0: "negative", 1: "positive"}, template="{label} w5",
                                      verbalizers={0: "w6", 1: "w7"})
    texts = ["w12 w13 w14", "w22 w23", "w15 w30 w31 w32 w9"]
    scores = classifier.score(texts)
    text_ids = tokenizer(texts[2], add_special_tokens=False)["input_ids"]
    for label, verbalizer in enumerate([6, 7]):
        context = [tokenizer.cls_token_id, verbalizer, 5]  # the tokenizer adds no framing: [CLS] is the prefix
        expected = brute_force_log_likelihood(model, context, text_ids)
        assert scores.log_likelihoods[2, label] == pytest.approx(expected, abs=1e-5)
    assert (scores.standard_errors == 0).all()
    assert scores.log_likelihoods[:, 0] != pytest.approx(scores.log_likelihoods[:, 1])  # the prompt matters
    assert scores.predictions == list(scores.log_likelihoods.argmax(1))  # uniform priors

    result = evaluate_classification(classifier, texts, [0, 1, 0])
    assert result["num_items"] == 3 and result["mode"] == "label-conditioned" and result["shared_noise"] is None
    assert result["prompt_tokens"] == {"negative": ["[CLS]", "w6", "w5"], "positive": ["[CLS]", "w7", "w5"]}
    assert result["mean_standard_error"] == 0.0
    report = markdown_report(result)
    assert "| Class | Gold | Gold share |" in report and "| gold \\ predicted | negative | positive |" in report


def test_priors_add_their_log(tokenizer):
    model, texts = tiny_gpt2(), ["w12 w13 w14", "w22 w23", "w15 w30 w31"]
    uniform = GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"}).score(texts)
    skewed = GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"}, priors=[1, 3]).score(texts)
    assert skewed.log_priors.tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    assert (skewed.log_likelihoods == uniform.log_likelihoods).all()
    assert skewed.log_joint[0, 1] == pytest.approx(uniform.log_likelihoods[0, 1] + math.log(0.75))
    overwhelming = GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"}, priors={0: 1e-30, 1: 1.0})
    assert overwhelming.score(texts).predictions == [1, 1, 1]


def test_loud_failures(tokenizer):
    model = tiny_gpt2()
    classifier = GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"})
    with pytest.raises(ValueError, match="outside the label set"):
        evaluate_classification(classifier, ["w12", "w13"], [0, 2])
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        classifier.score(["w12", "   "])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        classifier.score([" ".join(["w12"] * 31)])
    with pytest.raises(ValueError, match="identical prompt"):
        GenerativeClassifier(model, tokenizer, {0: "negative", 1: "positive"})  # both verbalizers are [UNK]
    with pytest.raises(ValueError, match="priors must be positive"):
        GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"}, priors=[0, 1])
    with pytest.raises(ValueError, match="one model for each class"):
        GenerativeClassifier({0: model}, tokenizer, {0: "w6", 1: "w7"})
    with pytest.raises(ValueError, match="not be comparable"):
        GenerativeClassifier({0: model, 1: tiny_mdlm()}, tokenizer, {0: "w6", 1: "w7"})
    framing_free = tiny_tokenizer(VOCAB, specials=("[PAD]", "[UNK]"))
    with pytest.raises(ValueError, match="causal LM needs a context"):
        GenerativeClassifier({0: model, 1: model}, framing_free, {0: "w6", 1: "w7"})


# ---- the suite with masked diffusion LMs ----

def test_model_per_class_mdlm_classifies_a_separable_set(tokenizer, class_models):
    texts = toy_texts(0, 6, seed=100) + toy_texts(1, 6, seed=101)  # unseen texts
    labels = [0] * 6 + [1] * 6
    classifier = GenerativeClassifier(class_models, tokenizer, {0: "low", 1: "high"}, num_samples=16, seed=0)
    result = evaluate_classification(classifier, texts, labels)
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0 and not result["collapsed"]
    assert result["mode"] == "model per class" and result["shared_noise"] is True
    assert result["start_prefix"] == ["[CLS]"] and result["num_samples"] == 16
    assert result["mean_standard_error"] > 0  # Monte Carlo bound, with its error reported
    assert result["confusion_matrix"]["matrix"] == [[6, 0], [0, 6]]


def test_identical_class_models_score_identically(tokenizer, class_models):
    """Common random numbers: the same text under two identical models sees the same noise, difference exactly 0."""
    twins = {0: class_models[0], 1: copy.deepcopy(class_models[0])}
    texts = toy_texts(0, 3, seed=7) + toy_texts(1, 3, seed=8)
    scores = GenerativeClassifier(twins, tokenizer, {0: "a", 1: "b"}, num_samples=8, seed=3).score(texts)
    assert (scores.log_likelihoods[:, 0] == scores.log_likelihoods[:, 1]).all()
    assert scores.num_ties == len(texts) and scores.predictions == [0] * len(texts)  # ties go to the lowest id
    other_seed = GenerativeClassifier(twins, tokenizer, {0: "a", 1: "b"}, num_samples=8, seed=4).score(texts)
    assert (other_seed.log_likelihoods[:, 0] != scores.log_likelihoods[:, 0]).any()  # the noise is real


def test_label_conditioned_diffusion_scores_are_the_likelihood_api(tokenizer, class_models):
    model = class_models[1]
    classifier = GenerativeClassifier(model, tokenizer, {0: "w6", 1: "w7"}, template="{label} w5", num_samples=8,
                                      seed=1)
    texts = toy_texts(1, 2, seed=9)
    scores = classifier.score(texts)
    estimator = build_likelihood(model, num_samples=8, seed=1)
    for label, verbalizer in enumerate([6, 7]):
        targets = tokenizer(texts, add_special_tokens=False)["input_ids"]
        direct = estimator.log_likelihood(targets, [[tokenizer.cls_token_id, verbalizer, 5]] * len(texts))
        assert scores.log_likelihoods[:, label].tolist() == pytest.approx([e.log_likelihood for e in direct])
    assert classifier.describe()["shared_noise"] is True  # prompts of equal length share every draw


# ---- data and CLI ----

def test_load_examples_formats(tmp_path):
    rows = [("a film \"so\" good ", "1"), ("dull", "0"), ("fine", "1")]
    (tmp_path / "d.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    quoted = [(s.replace('"', '""'), lab) for s, lab in rows]
    (tmp_path / "d.csv").write_text("sentence,label\n" + "".join(f'"{s}",{lab}\n' for s, lab in quoted))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"sentence": s, "label": int(lab)}) + "\n"
                                              for s, lab in rows))
    (tmp_path / "d.json").write_text(json.dumps({"sentence": [s for s, _ in rows], "label": [lab for _, lab in rows]}))
    for name in ("d.tsv", "d.csv", "d.jsonl", "d.json"):
        texts, labels = load_examples(tmp_path / name, "sentence", "label", ["0", "1"])
        assert texts == ["a film \"so\" good", "dull", "fine"] and labels == [1, 0, 1], name
    assert load_examples(tmp_path / "d.tsv", "sentence", "label", ["0", "1"], limit=2)[1] == [1, 0]
    with pytest.raises(ValueError, match="outside the label set"):
        load_examples(tmp_path / "d.tsv", "sentence", "label", ["0", "2"])
    with pytest.raises(ValueError, match=r"not all of \['label', 'text'\]"):
        load_examples(tmp_path / "d.tsv", "text", "label", ["0", "1"])
    assert parse_label_spec("0=negative, 1=positive") == {"0": "negative", "1": "positive"}
    with pytest.raises(ValueError, match="value=name"):
        parse_label_spec("0=negative,1")


def test_sst2_reads(shared_dir):
    texts, labels = load_examples(shared_dir / "data" / "sst2" / "test.tsv", "sentence", "label", ["0", "1"])
    assert len(texts) == 872 and labels.count(1) == 444 and labels.count(0) == 428
    assert texts[1] == "unflinchingly bleak and desperate" and labels[1] == 0
    assert all(texts)


@pytest.mark.slow
def test_cli_writes_reports_and_flags_collapse(tmp_path, tokenizer, class_models, capsys):
    from hub_exports import export

    folders = {label: export(model, tokenizer, tmp_path / f"class{label}") for label, model in class_models.items()}
    texts = toy_texts(0, 5, seed=200) + toy_texts(1, 5, seed=201)
    (tmp_path / "toy.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{int(i >= 5)}\n"
                                                                     for i, t in enumerate(texts)))
    common = ["--data", str(tmp_path / "toy.tsv"), "--labels", "0=low,1=high", "--num-samples", "8"]
    per_class = ["--model-per-class", f"low={folders[0]}", "--model-per-class", f"1={folders[1]}"]
    assert eval_cli(["classification", *per_class, *common, "--output", str(tmp_path / "good")]) == 0
    result = json.loads((tmp_path / "good" / "classification.json").read_text())
    assert result["accuracy"] == 1.0 and not result["collapsed"] and result["num_items"] == 10
    assert result["models_per_class"] == {"low": str(folders[0]), "high": str(folders[1])}
    assert "| Class | Gold |" in (tmp_path / "good" / "classification.md").read_text()
    assert "accuracy 1.0000" in capsys.readouterr().out

    twins = ["--model-per-class", f"0={folders[0]}", "--model-per-class", f"1={folders[0]}"]
    code = eval_cli(["classification", *twins, *common, "--output", str(tmp_path / "twins"), "--limit", "8"])
    result = json.loads((tmp_path / "twins" / "classification.json").read_text())
    assert code == COLLAPSE_EXIT_CODE and result["collapsed"] and result["num_ties"] == 8  # all tie -> class 0
    assert "**COLLAPSED**" in (tmp_path / "twins" / "classification.md").read_text()
    assert "COLLAPSED" in capsys.readouterr().err

    code = eval_cli(["classification", "--model", str(folders[1]), "--template", "{label} w5", *common[:-4],
                     "--labels", "0=w6,1=w7", "--num-samples", "4", "--output", str(tmp_path / "prompted")])
    result = json.loads((tmp_path / "prompted" / "classification.json").read_text())
    assert code == (COLLAPSE_EXIT_CODE if result["collapsed"] else 0) and result["mode"] == "label-conditioned"


@pytest.mark.slow
def test_cli_reads_sst2(tmp_path, shared_dir, tokenizer):
    from hub_exports import export

    folder = export(tiny_mdlm(max_length=128), tokenizer, tmp_path / "export")  # SST-2 has long phrases
    sst2 = shared_dir / "data" / "sst2"
    code = eval_cli(["classification", "--model", str(folder), "--data", str(sst2 / "test.tsv"), "--labels",
                     "0=w6,1=w7", "--template", "{label} w5", "--priors", str(sst2 / "dev.tsv"), "--limit", "16",
                     "--num-samples", "2", "--output", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "classification.json").read_text())
    assert result["num_items"] == 16 and code == (COLLAPSE_EXIT_CODE if result["collapsed"] else 0)
    assert result["unk_rate"] > 0.9  # SST-2 words are unknown to the toy tokenizer, and the report says so
    assert result["priors"]["w7"] == pytest.approx(0.55, abs=0.03)  # dev split class frequencies


def test_texts_too_long_fail_unless_truncated_and_counted():
    from eval_suites.classification import GenerativeClassifier
    from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
    from tests.modeling_common import tiny_tokenizer

    torch.manual_seed(0)
    model = MdlmForMaskedDiffusionLM(MdlmConfig(vocab_size=40, mask_token_id=4, pad_token_id=0, hidden_size=32,
                                                num_hidden_layers=1, num_attention_heads=4, cond_dim=8,
                                                max_position_embeddings=8, timestep_embedding_size=16))
    tokenizer = tiny_tokenizer(40)
    long_text = " ".join(f"w{i}" for i in range(5, 20))
    strict = GenerativeClassifier(model, tokenizer, {0: "w5", 1: "w6"}, num_samples=2)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        strict.score([long_text, "w7 w8"])
    lenient = GenerativeClassifier(model, tokenizer, {0: "w5", 1: "w6"}, num_samples=2, truncate=True)
    assert lenient.score([long_text, "w7 w8"]).log_likelihoods.shape == (2, 2)
    assert lenient.describe()["truncated_texts"] == 1
