"""BLiMP suite: scorers against brute-force references, batching invariance, real data parsing, loud failures."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from eval_suites.__main__ import main as eval_cli
from eval_suites.blimp import MinimalPair, evaluate_blimp, load_pairs
from eval_suites.scoring import CausalLMScorer, MaskedLMScorer
from hub_exports import export, verify
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from tests.modeling_common import tiny_tokenizer
from trainers.embedded_corpus import generate_corpus, write_minimal_pairs
from trainers.tokenization import train_tokenizer

SENTENCES = ["The cat sees the dogs.", "Many clever teachers sleep.", "A bird with the keys is happy today."]


@pytest.fixture(scope="module")
def subword_tokenizer():
    # A small vocabulary forces multi-token words, which is what separates pll from pll_word_l2r.
    return train_tokenizer(generate_corpus(300, seed=3), vocab_size=90, min_frequency=1)


def tiny_mlm(tokenizer):
    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, max_position_embeddings=128, position_bucket_size=8,
                           pad_token_id=tokenizer.pad_token_id)
    return LtgBertForMaskedLM(config).eval()


def brute_force_pll(model, tokenizer, sentence, word_l2r=False):
    """One forward pass per scored token, written independently of the batched scorer."""
    encoding = tokenizer(sentence, return_special_tokens_mask=True)
    ids, words, total = encoding["input_ids"], encoding.word_ids(), 0.0
    for position, token in enumerate(ids):
        if encoding["special_tokens_mask"][position]:
            continue
        masked = list(ids)
        for other in range(len(ids)):
            later_in_word = word_l2r and other > position and words[other] is not None and \
                words[other] == words[position]
            if other == position or later_in_word:
                masked[other] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, position]
        total += logits.log_softmax(-1)[token].item()
    return total


@pytest.mark.parametrize("sparse_head", [True, False], ids=["sparse_head", "full_logits"])
@pytest.mark.parametrize("metric", ["pll", "pll_word_l2r"])
def test_pll_equals_brute_force(subword_tokenizer, metric, sparse_head):
    model = tiny_mlm(subword_tokenizer)
    assert any(len(set(w for w in subword_tokenizer(s).word_ids() if w is not None)) <
               len(subword_tokenizer(s)["input_ids"]) - 2 for s in SENTENCES), "need multi-token words"
    scorer = MaskedLMScorer(model, subword_tokenizer, metric=metric)
    assert scorer.sparse_head  # LTG-BERT takes sparse_prediction; the other path is what any other masked LM gets
    scorer.sparse_head = sparse_head
    scores = scorer.score(SENTENCES)
    expected = [brute_force_pll(model, subword_tokenizer, s, word_l2r=metric == "pll_word_l2r") for s in SENTENCES]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_compiled_pll_equals_brute_force_with_one_encoder_graph_for_every_batch_shape(subword_tokenizer):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = tiny_mlm(subword_tokenizer)
    sentences = SENTENCES + generate_corpus(12, seed=3)
    scorer = MaskedLMScorer(model, subword_tokenizer, token_budget=200, torch_compile=True)  # batches of many shapes
    graphs_before = counters["stats"]["unique_graphs"]  # the process's count, earlier tests' graphs included
    scores = scorer.score(sentences)
    expected = [brute_force_pll(model, subword_tokenizer, s) for s in sentences]
    assert scores == pytest.approx(expected, abs=1e-5)
    # dynamic shapes: the encoder, and the head on either side of its position selection (a graph break)
    assert counters["stats"]["unique_graphs"] - graphs_before <= 4 and scorer.forward_tokens > 0


def test_word_l2r_differs_from_pll_on_multi_token_words(subword_tokenizer):
    model = tiny_mlm(subword_tokenizer)
    plain = MaskedLMScorer(model, subword_tokenizer, metric="pll").score(SENTENCES)
    l2r = MaskedLMScorer(model, subword_tokenizer, metric="pll_word_l2r").score(SENTENCES)
    assert max(abs(a - b) for a, b in zip(plain, l2r)) > 1e-3


def test_batched_equals_unbatched(subword_tokenizer):
    model = tiny_mlm(subword_tokenizer)
    sentences = SENTENCES + generate_corpus(20, seed=5)
    batched = MaskedLMScorer(model, subword_tokenizer, token_budget=100_000).score(sentences)
    one_by_one = [MaskedLMScorer(model, subword_tokenizer, token_budget=1).score([s])[0] for s in sentences]
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_nothing_to_score_gives_zero(subword_tokenizer):
    scorer = MaskedLMScorer(tiny_mlm(subword_tokenizer), subword_tokenizer)
    assert scorer.score([]) == []
    assert scorer.score([""]) == [0.0]  # [CLS] [SEP] only: no token to mask
    mixed = scorer.score(["", SENTENCES[0]])
    assert mixed[0] == 0.0 and mixed[1] == pytest.approx(scorer.score([SENTENCES[0]])[0], abs=1e-6)


def test_causal_scorer_equals_brute_force():
    tokenizer = tiny_tokenizer(50, specials=("[PAD]", "[UNK]", "[BOS]"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=2, eos_token_id=2)
    model = GPT2LMHeadModel(config).eval()
    sentences = ["w7 w9 w11", "w3 w40 w41 w42 w8"]
    scores = CausalLMScorer(model, tokenizer).score(sentences)
    for sentence, score in zip(sentences, scores):
        ids = [tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        assert score == pytest.approx(sum(log_probs[t - 1, ids[t]].item() for t in range(1, len(ids))), abs=1e-5)


def test_vocabulary_mismatch_fails_loudly(subword_tokenizer):
    model = tiny_mlm(subword_tokenizer)
    model.config.vocab_size = len(subword_tokenizer) - 10  # as if the tokenizer belonged to another model
    with pytest.raises(ValueError, match="vocab_size"):
        MaskedLMScorer(model, subword_tokenizer).score(SENTENCES)


def test_all_real_paradigms_parse_and_score(shared_dir):
    pairs = load_pairs(shared_dir / "data" / "blimp")
    assert len(pairs) == 67_000 and len({p.paradigm for p in pairs}) == 67
    assert all(p.good and p.bad for p in pairs)
    assert sum(p.good == p.bad for p in pairs) == 7  # a known quirk of BLiMP (passive_1, principle_A_case_2, ...)
    tokenizer = train_tokenizer(generate_corpus(2000, seed=3), vocab_size=400, min_frequency=1)
    sample = [pair for pair in load_pairs(shared_dir / "data" / "blimp", limit_per_paradigm=2)]
    result = evaluate_blimp(tiny_mlm(tokenizer), tokenizer, sample)
    assert result["num_paradigms"] == 67 and result["num_pairs"] == 134
    assert 0 < result["unk_rate"] < 1, "BLiMP has characters the tiny tokenizer never saw; the report must say so"
    assert result["num_identical_pairs"] == 0  # the first two pairs of each file are all proper pairs


def test_accuracy_is_the_mean_over_paradigms():
    class LengthScorer:  # prefers shorter sentences, so results are known in advance
        def __init__(self, model, tokenizer, **options):
            pass

        def score(self, sentences):
            return [-len(s) for s in sentences]

    from eval_suites.scoring import register_scorer

    register_scorer("test_length", LengthScorer)
    pairs = [MinimalPair("a b", "a b c", "p1", "x", "0"), MinimalPair("a b c", "a b", "p1", "x", "1"),
             MinimalPair("a", "a b", "p2", "y", "0")]
    result = evaluate_blimp(None, tiny_tokenizer(10), pairs, scorer="test_length")
    assert result["accuracy"] == pytest.approx((0.5 + 1.0) / 2) and result["micro_accuracy"] == pytest.approx(2 / 3)
    assert result["per_phenomenon"] == {"x": 0.5, "y": 1.0}


def test_cli_writes_reports_and_card(tmp_path, subword_tokenizer, capsys):
    model = tiny_mlm(subword_tokenizer)
    folder = export(model, subword_tokenizer, tmp_path / "export")
    data = write_minimal_pairs(tmp_path / "pairs", pairs_per_paradigm=5)
    assert eval_cli(["blimp", "--model", str(folder), "--data", str(data), "--output", str(tmp_path / "out"),
                     "--write-card"]) == 0
    result = json.loads((tmp_path / "out" / "blimp.json").read_text())
    assert result["num_pairs"] == 20 and result["num_paradigms"] == 4 and result["scorer"] == "pll"
    assert "| Paradigm | Accuracy |" in (tmp_path / "out" / "blimp.md").read_text()
    card = (folder / "README.md").read_text()
    assert "type: blimp" in card and f"value: {round(result['accuracy'], 4)}" in card
    verify(folder)  # the card is outside the manifest: adding results keeps the export valid


def blimp_cli_refuses(capsys, data, output, *named):
    """Issue 14.20: exit 1 with one message naming the file (and line), no traceback; the data is checked before the
    model is loaded (here: a model that does not exist) and nothing is written."""
    code = eval_cli(["blimp", "--model", str(data.parent / "no_model"), "--data", str(data), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.count("BLiMP data refused:") == 1, err
    for text in named:
        assert text in err, err
    assert not output.exists()


def test_cli_names_the_file_and_line_of_bad_data(tmp_path, capsys):
    data = write_minimal_pairs(tmp_path / "pairs", pairs_per_paradigm=3)
    broken = sorted(data.iterdir())[1]
    lines = broken.read_text().splitlines()
    broken.write_text("\n".join(lines[:2] + ['{"sentence_good": "A cat sleeps.", "sentence_bad": '] + lines[2:]) + "\n")
    blimp_cli_refuses(capsys, data, tmp_path / "out", f"{broken}:3 is not valid JSON")
    broken.write_text("\n".join(lines[:1] + ['["A cat sleeps.", "A cat sleep."]']) + "\n")
    blimp_cli_refuses(capsys, data, tmp_path / "out", f"{broken}:2 is not a JSON object")
    broken.write_text("\n\n  \n")
    blimp_cli_refuses(capsys, data, tmp_path / "out", f"{broken} holds no minimal pairs")


def test_cli_names_an_empty_or_missing_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    blimp_cli_refuses(capsys, tmp_path / "empty", tmp_path / "out",
                      f"No *.jsonl or *.jsonl.gz files in {tmp_path / 'empty'}")
    blimp_cli_refuses(capsys, tmp_path / "missing", tmp_path / "out", f"{tmp_path / 'missing'} is not a folder")


def test_cli_requires_an_output_folder(tmp_path, capsys, monkeypatch):
    """Issue 14.23: no default into the current directory (a checkout, a user's source tree): --output is named."""
    monkeypatch.chdir(tmp_path)
    data = write_minimal_pairs(tmp_path / "pairs", pairs_per_paradigm=2)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli(["blimp", "--model", str(tmp_path / "model"), "--data", str(data)])
    assert exit_info.value.code == 2 and "--output" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pairs"]
