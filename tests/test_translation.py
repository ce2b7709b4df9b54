"""The translation suite: corpus BLEU and chrF (not averages of sentence scores), edit-distance accuracies on
hand-computed cases, and prompting a zoo causal LM with left-padded batches, greedy and beam."""

import math

import pytest
import sacrebleu
import torch

from eval_suites.metrics.translation.translation import edit_distance, translation_scores
from eval_suites.translation import evaluate_translation, load_parallel, markdown_report, translate
from modeling.backpack import BackpackConfig, BackpackForCausalLM
from tests.modeling_common import tiny_tokenizer


def test_corpus_bleu_by_hand():
    """'the cat sat on the mat' against 'the cat sat on a mat': n-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity
    penalty (equal lengths): BLEU = (5/6 · 3/5 · 2/4 · 1/3)^(1/4)."""
    scores = translation_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert scores["exact_match"] == 0
    assert scores["word_accuracy"] == pytest.approx(1 - 1 / 6)  # one substitution in six words
    same = ["un chat noir dort ici", "deux chiens jouent dans le parc"]
    identical = translation_scores(same, same)
    assert identical["bleu"] == pytest.approx(100) and identical["chrf"] == pytest.approx(100)
    assert identical["exact_match"] == identical["word_accuracy"] == identical["char_accuracy"] == 1.0
    assert translation_scores(["xyz"], ["abc"])["chrf"] == pytest.approx(0)
    # Unsmoothed corpus BLEU: segments shorter than four words have no 4-grams, so BLEU is 0 even when exact.
    assert translation_scores(["un chat"], ["un chat"])["bleu"] == 0


def test_corpus_scores_pool_counts_and_are_not_sentence_averages():
    hypotheses = ["the cat sat on the mat", "a dog"]
    references = ["the cat sat on a mat", "a dog runs in the park"]
    corpus = translation_scores(hypotheses, references)
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hypotheses, references)) / 2
    assert not math.isclose(corpus["bleu"], sentence_mean, rel_tol=1e-3)
    assert corpus["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    # Pooled edit distances: (1 + 4 deletions) / (6 + 6 reference words).
    assert corpus["word_accuracy"] == pytest.approx(1 - 5 / 12)


def test_edit_distance_and_errors():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], list("abc")) == 3 and edit_distance(list("abc"), list("abc")) == 0
    assert translation_scores(["a b c d e f g"], ["x"])["word_accuracy"] == 0.0  # floored, not negative
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        translation_scores(["a", "b"], ["a"])


def test_prompting_a_zoo_causal_lm(tmp_path):
    tokenizer = tiny_tokenizer(64, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<en>", "<fr>"))
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    model = BackpackForCausalLM(BackpackConfig(vocab_size=64, hidden_size=32, num_senses=4, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=32,
                                               pad_token_id=0)).eval()
    sources = ["w10 w11 w12", "w13", "w14 w15 w16 w17 w18"]
    greedy = translate(model, tokenizer, sources, max_new_tokens=6, batch_size=2)
    one_by_one = [translate(model, tokenizer, [source], max_new_tokens=6)[0] for source in sources]
    assert greedy == one_by_one, "left padding must not change a translation"
    assert tokenizer.padding_side == "right", "the tokenizer is left as it was"
    result = evaluate_translation(model, tokenizer, sources, ["w20", "w21", "w22"], num_beams=(1, 2),
                                  max_new_tokens=6)
    assert {"greedy", "beam2"} <= set(result) and result["greedy"]["num_segments"] == 3
    assert "| beam2 |" in markdown_report(result)
    (tmp_path / "a.en").write_text("one\n\ntwo\nthree")
    (tmp_path / "a.fr").write_text("un\nx\ndeux\ntrois")
    assert load_parallel(tmp_path / "a.en", tmp_path / "a.fr") == (["one", "two", "three"], ["un", "deux", "trois"])
