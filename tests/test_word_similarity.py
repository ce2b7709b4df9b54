"""Word similarity: Spearman on hand-computed cases (ties included), every dataset format on the real files, and
coverage bookkeeping (multi-token and unknown words) with embeddings and Backpack sense vectors."""

import pytest
import torch

from eval_suites.word_similarity import (DATASETS, evaluate_word_similarity, load_word_pairs, markdown_report, ranks,
                                         spearman)
from modeling.backpack import BackpackConfig, BackpackForCausalLM
from tests.modeling_common import tiny_tokenizer


def test_spearman_by_hand():
    # d = (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ties take the mean rank: x ranks (1, 2.5, 2.5, 4); with y = (1, 2, 3, 4) Pearson of ranks = 4.5 / sqrt(4.5 * 5)
    assert list(ranks([5, 7, 7, 9])) == [1, 2.5, 2.5, 4]
    assert spearman([5, 7, 7, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        spearman([1], [1])


@pytest.mark.parametrize("name,count", [("simlex999", 999), ("ws353", 353), ("rg65", 65), ("simverb3500", 3500),
                                        ("multisimlex_en", 1888), ("multisimlex_fr", 1888)])
def test_every_dataset_parses(shared_dir, name, count):
    relative, file_format = DATASETS[name]
    pairs = load_word_pairs(shared_dir / "data" / relative, file_format)
    assert len(pairs) == count
    assert all(isinstance(a, str) and a and isinstance(b, str) and b and isinstance(s, float) for a, b, s in pairs)


def model_and_tokenizer():
    tokenizer = tiny_tokenizer(60)  # words w5..w59; anything else is [UNK]
    torch.manual_seed(0)
    model = BackpackForCausalLM(BackpackConfig(vocab_size=60, hidden_size=16, num_senses=4, num_hidden_layers=1,
                                               num_attention_heads=2, max_position_embeddings=16)).eval()
    return model, tokenizer


def test_coverage_and_sources():
    model, tokenizer = model_and_tokenizer()
    pairs = [("w5", "w6", 1.0), ("w7", "w8", 3.0), ("w9", "w10", 2.0), ("w5", "nonword", 4.0),
             ("w11 w12", "w13", 5.0)]
    embeddings = evaluate_word_similarity(model, tokenizer, pairs)
    assert (embeddings["num_scored"], embeddings["skipped_unknown"], embeddings["skipped_multi_token"]) == (3, 1, 1)
    weights = model.get_input_embeddings().weight.detach()
    cosines = [torch.cosine_similarity(weights[a], weights[b], dim=0).item() for a, b in ((5, 6), (7, 8), (9, 10))]
    assert embeddings["spearman"] == pytest.approx(spearman([1.0, 3.0, 2.0], cosines))
    averaged = evaluate_word_similarity(model, tokenizer, pairs, multi_token="mean")
    assert averaged["num_scored"] == 4 and averaged["averaged_multi_token_words"] == 1
    senses = evaluate_word_similarity(model, tokenizer, pairs, source="senses")
    assert len(senses["spearman_per_sense"]) == 4
    assert senses["spearman"] == max(senses["spearman_per_sense"]) and senses["best_sense"] in range(4)
    assert "| toy | senses |" in markdown_report({"toy": senses})


def test_embeddings_only_models_refuse_senses():
    from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM

    model = ModdedGptForCausalLM(ModdedGptConfig(vocab_size=128, tokenizer_vocab_size=60, eot_token_id=3,
                                                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 head_dim=16))
    with pytest.raises(ValueError, match="no sense vectors"):
        evaluate_word_similarity(model, tiny_tokenizer(60), [("w5", "w6", 1.0), ("w7", "w8", 2.0)],
                                 source="senses")
