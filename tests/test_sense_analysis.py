"""Sense analysis: the top tokens of each sense are E·s (checked by hand), and both figures are written as PNGs."""

import pytest
import torch

from eval_suites.sense_analysis import (contextualization, plot_contextualization, plot_sense_table,
                                        top_tokens_per_sense)
from tests.test_word_similarity import model_and_tokenizer


def test_top_tokens_are_the_sense_vectors_projected_on_the_embedding():
    model, tokenizer = model_and_tokenizer()
    report = top_tokens_per_sense(model, tokenizer, "w7", count=3)
    assert report["token_ids"] == [7] and not report["multi_token_mean"] and len(report["senses"]) == 4
    senses = model.backpack.sense_vectors(torch.tensor([[7]]))[0, :, 0]
    logits = senses @ model.get_input_embeddings().weight.detach().T
    for sense, entry in enumerate(report["senses"]):
        expected = logits[sense].topk(3).indices.tolist()
        assert [tokenizer.convert_tokens_to_ids(token) for token, _ in entry["top"]] == expected
        assert entry["top"][0][1] >= entry["top"][-1][1] and entry["bottom"][0][1] <= entry["bottom"][-1][1]
    assert top_tokens_per_sense(model, tokenizer, "w8 w9")["multi_token_mean"]


def test_figures_are_written(tmp_path):
    model, tokenizer = model_and_tokenizer()
    reports = [top_tokens_per_sense(model, tokenizer, word, count=4) for word in ("w7", "w8")]
    table = plot_sense_table(reports, tmp_path / "senses.png", count=4)
    tokens, alpha = contextualization(model, tokenizer, "w10 w11 w12 w13 w14")
    assert alpha.shape == (4, 5, 5) and torch.allclose(alpha.sum(-1), torch.ones(4, 5))
    heatmap = plot_contextualization(tokens, alpha, tmp_path / "alpha.png")
    for path in (table, heatmap):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_models_without_senses_are_refused():
    from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
    from tests.modeling_common import tiny_tokenizer

    model = ModdedGptForCausalLM(ModdedGptConfig(vocab_size=128, tokenizer_vocab_size=60, eot_token_id=3,
                                                 hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 head_dim=16))
    with pytest.raises(ValueError, match="no sense vectors"):
        top_tokens_per_sense(model, tiny_tokenizer(60), "w7")
    with pytest.raises(ValueError, match="no contextualization"):
        contextualization(model, tiny_tokenizer(60), "w7 w8")


def test_cli_runs_the_three_suites_on_an_export(tmp_path, shared_dir, capsys):
    from eval_suites.__main__ import main
    from hub_exports import export

    model, tokenizer = model_and_tokenizer()
    tokenizer.eos_token = "[SEP]"
    folder = export(model, tokenizer, tmp_path / "export")
    assert main(["senses", "--model", str(folder), "--words", "w7", "w8", "--sentence", "w10 w11 w12",
                 "--output", str(tmp_path / "senses")]) == 0
    assert (tmp_path / "senses" / "senses.png").is_file() and (tmp_path / "senses" / "contextualization.png").is_file()
    assert main(["word-similarity", "--model", str(folder), "--data-dir", str(shared_dir / "data"), "--datasets",
                 "rg65", "--source", "senses", "--output", str(tmp_path / "ws")]) == 0
    assert "rg65: Spearman" in capsys.readouterr().out
    (tmp_path / "src.en").write_text("w10 w11\nw12\n")
    (tmp_path / "ref.fr").write_text("w20 w21\nw22\n")
    assert main(["translation", "--model", str(folder), "--source", str(tmp_path / "src.en"), "--target",
                 str(tmp_path / "ref.fr"), "--num-beams", "1", "2", "--max-new-tokens", "4", "--output",
                 str(tmp_path / "tr")]) == 0
    printed = capsys.readouterr().out
    assert "greedy: BLEU" in printed and "beam2: BLEU" in printed
