"""Generative perplexity: the chunked, EOS-aware score against a log-softmax computed here, the unigram entropy and
repetition share against hand values, the CLI end to end on MDLM and BD3-LM exports, reproducibility by seed, and the
refusals of bad input before any work."""

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from eval_suites.__main__ import main as eval_cli
from eval_suites.generative_perplexity import (
    TextScore,
    generative_perplexity_report,
    score_texts,
    unigram_entropy,
)
from hub_exports import export, load_tokenizer
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from tests.modeling_common import tiny_tokenizer

SIZES = dict(vocab_size=40, mask_token_id=4, pad_token_id=0, bos_token_id=2, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0,
             zero_init_modulation=False)
SCORER_CONTEXT = 16
EOS = 50256  # GPT-2's <|endoftext|>
TEXT = "The cat sat.<|endoftext|> A dog ran far away from home<|endoftext|> and then it slept under the old tree"


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_dir):
    return load_tokenizer(str(shared_dir / "data" / "tokenizers" / "gpt2"))


@pytest.fixture(scope="module")
def scorer(gpt2_tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(gpt2_tokenizer), n_positions=SCORER_CONTEXT, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=EOS, eos_token_id=EOS)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def scorer_folder(scorer, gpt2_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scorer")
    scorer.save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    return folder


def diffusion_export(kind: str, folder):
    torch.manual_seed(0)
    if kind == "mdlm":
        model = MdlmForMaskedDiffusionLM(MdlmConfig(**SIZES))
    else:
        model = Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**SIZES, block_size=4))
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    return export(model.eval(), tiny_tokenizer(SIZES["vocab_size"], specials), folder, run_verify=False)


@pytest.fixture(scope="module")
def mdlm_folder(tmp_path_factory):
    return diffusion_export("mdlm", tmp_path_factory.mktemp("mdlm") / "export")


@pytest.fixture(scope="module")
def bd3lm_folder(tmp_path_factory):
    return diffusion_export("bd3lm", tmp_path_factory.mktemp("bd3lm") / "export")


def hand_nll(scorer, ids, chunk_length):
    """Sum and count of -log p over each chunk's targets, chunks scored alone, EOS targets skipped but the chunk's
    first EOS."""
    total, count = 0.0, 0
    for start in range(0, len(ids), chunk_length):
        chunk = ids[start:start + chunk_length]
        with torch.no_grad():
            log_probs = torch.log_softmax(scorer(torch.tensor([chunk])).logits[0].double(), dim=-1)
        first_eos = chunk.index(EOS) if EOS in chunk else None
        for position in range(1, len(chunk)):
            if chunk[position] != EOS or position == first_eos:
                total -= log_probs[position - 1, chunk[position]].item()
                count += 1
    return total, count


@pytest.mark.parametrize("chunk_length", [SCORER_CONTEXT, 5])
def test_score_is_the_scorer_log_softmax_in_chunks(scorer, gpt2_tokenizer, chunk_length):
    ids = gpt2_tokenizer(TEXT)["input_ids"]
    assert len(ids) > SCORER_CONTEXT and ids.count(EOS) == 2  # several chunks; an EOS left out in some
    short = "A short one."
    scores = score_texts(scorer, gpt2_tokenizer, [TEXT, short], chunk_length, batch_size=3)
    for score, text in zip(scores, [TEXT, short]):
        total, count = hand_nll(scorer, gpt2_tokenizer(text)["input_ids"], chunk_length)
        assert score.num_tokens == count and score.nll == pytest.approx(total, rel=1e-5)
    report = generative_perplexity_report(scores)
    assert report["num_scored_tokens"] == sum(s.num_tokens for s in scores)
    assert report["generative_perplexity"] == pytest.approx(math.exp(sum(s.nll for s in scores)
                                                                     / report["num_scored_tokens"]))


def test_first_eos_of_a_chunk_is_scored_the_later_ones_not(scorer, gpt2_tokenizer):
    text = "Hi.<|endoftext|> Yes<|endoftext|> ok"
    ids = gpt2_tokenizer(text)["input_ids"]
    assert ids.count(EOS) == 2 and len(ids) <= SCORER_CONTEXT
    assert score_texts(scorer, gpt2_tokenizer, [text], SCORER_CONTEXT)[0].num_tokens == len(ids) - 2  # not: 2nd EOS


def test_entropy_and_repetition_against_hand_values():
    varied, repeated = [5, 5, 6, 7], [9] * 8
    assert unigram_entropy(varied) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy(repeated) == 0.0
    scores = [TextScore(2.0, 3, varied), TextScore(4.0, 7, repeated)]
    report = generative_perplexity_report(scores, sample_ids=[[1, 2], [3, 3]])
    assert report["mean_unigram_entropy"] == pytest.approx(unigram_entropy(varied) / 2)
    assert report["mean_unigram_entropy_sample_ids"] == pytest.approx(math.log(2) / 2)
    assert report["repetitive_share"] == 0.5  # [9]*8: one distinct 4-gram of 5; [5, 5, 6, 7]: one of one
    assert report["generative_perplexity"] == pytest.approx(math.exp(6.0 / 10))


@pytest.mark.slow
def test_cli_samples_an_mdlm_export_and_rescores_its_saved_samples(mdlm_folder, scorer_folder, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    arguments = ["gen-ppl", "--model", str(mdlm_folder), "--scorer-model", str(scorer_folder), "--num-samples", "3",
                 "--batch-size", "2", "--length", "12", "--steps", "8", "--sampler", "ddpm", "--seed", "5",
                 "--save-samples", str(samples), "--output", str(tmp_path / "gen.json")]
    assert eval_cli(arguments) == 0
    result = json.loads((tmp_path / "gen.json").read_text())
    assert result["num_samples"] == 3 and len(result["per_sample"]) == 3 and result["num_scored_tokens"] > 0
    assert result["sampling"] == {"model": str(mdlm_folder), "length": 12, "num_steps": 8, "sampler": "ddpm",
                                  "top_p": 1.0, "seed": 5, "batch_size": 2, "skip_special_tokens": False}
    assert result["scorer"] == {"name": str(scorer_folder), "context_length": SCORER_CONTEXT, "eos_token_id": EOS}
    assert result["generative_perplexity"] == pytest.approx(math.exp(result["nll_per_token"]))
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [len(r["token_ids"]) for r in records] == [12] * 3 and all(4 not in r["token_ids"] for r in records)
    assert "Generative perplexity" in capsys.readouterr().out

    assert eval_cli(["gen-ppl", "--samples", str(samples), "--scorer-model", str(scorer_folder),
                     "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["generative_perplexity"] == pytest.approx(result["generative_perplexity"])
    assert again["mean_unigram_entropy_sample_ids"] == pytest.approx(result["mean_unigram_entropy_sample_ids"])
    assert again["sampling"] is None and again["samples_file"] == str(samples)


@pytest.mark.slow
def test_a_zoo_causal_export_scores_as_remote_code(tmp_path):
    torch.manual_seed(0)
    config = ModdedGptConfig(vocab_size=128, tokenizer_vocab_size=90, eot_token_id=89, pad_token_id=0, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=2, head_dim=16, intermediate_size=48,
                             max_position_embeddings=24, sliding_window_num_blocks=2, window_block_size=4,
                             zero_init_projections=False)
    model = ModdedGptForCausalLM(config).eval()
    folder = export(model, tiny_tokenizer(90), tmp_path / "modded_gpt", run_verify=False)
    texts = ["w5 w6 w7 w8 w9", "w30 w30 w31"]
    (tmp_path / "samples.txt").write_text("\n".join(texts) + "\n")
    assert eval_cli(["gen-ppl", "--samples", str(tmp_path / "samples.txt"), "--scorer-model", str(folder),
                     "--output", str(tmp_path / "gen.json")]) == 0
    result = json.loads((tmp_path / "gen.json").read_text())
    tokenizer = tiny_tokenizer(90)
    total = 0.0
    for text in texts:  # the word-level tokenizer has no EOS: every target counts
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        total -= sum(log_probs[position - 1, ids[position]].item() for position in range(1, len(ids)))
    assert result["num_scored_tokens"] == 4 + 2 and result["scorer"]["context_length"] == 24
    assert result["nll_per_token"] == pytest.approx(total / 6, rel=1e-5)
    assert result["mean_unigram_entropy_sample_ids"] is None


@pytest.mark.slow
def test_bd3lm_samples_are_reproducible_by_seed(bd3lm_folder, scorer_folder, tmp_path):
    def run(seed, name):
        samples = tmp_path / f"{name}.jsonl"
        assert eval_cli(["gen-ppl", "--model", str(bd3lm_folder), "--scorer-model", str(scorer_folder),
                         "--num-samples", "4", "--batch-size", "3", "--length", "8", "--top-p", "0.9",
                         "--seed", str(seed), "--save-samples", str(samples),
                         "--output", str(tmp_path / f"{name}.json")]) == 0
        return samples.read_text(), json.loads((tmp_path / f"{name}.json").read_text())

    first_samples, first = run(1, "first")
    again_samples, again = run(1, "again")
    other_samples, _ = run(2, "other")
    assert first_samples == again_samples and first["per_sample"] == again["per_sample"]
    assert other_samples != first_samples
    assert first["sampling"]["top_p"] == 0.9 and first["sampling"]["length"] == 8


@pytest.mark.slow
def test_bad_input_is_refused_before_any_work(mdlm_folder, bd3lm_folder, scorer_folder, tmp_path, capsys):
    listed = tmp_path / "listed.txt"
    listed.write_text("one sample\n")
    output = tmp_path / "never.json"
    common = ["--output", str(output)]
    cases = [
        (["--model", str(tmp_path / "missing"), "--scorer-model", str(scorer_folder)], "no such folder"),
        (["--model", str(scorer_folder), "--scorer-model", str(scorer_folder)], "not a masked diffusion model"),
        (["--model", str(mdlm_folder), "--scorer-model", str(mdlm_folder)], "not a causal LM"),
        (["--model", str(mdlm_folder), "--scorer-model", str(scorer_folder), "--length", "17"],
         "samples 1 to 16 tokens"),
        (["--model", str(bd3lm_folder), "--scorer-model", str(scorer_folder), "--length", "6"],
         "whole number of the model's blocks"),
        (["--model", str(mdlm_folder), "--scorer-model", str(scorer_folder), "--sampler", "no-such-sampler",
          "--steps", "2", "--length", "4"], "sampler"),
        (["--model", str(mdlm_folder), "--scorer-model", str(scorer_folder), "--top-p", "0"], "--top-p"),
        (["--model", str(mdlm_folder), "--scorer-model", str(scorer_folder), "--num-samples", "0"], "at least 1"),
        (["--samples", str(listed), "--scorer-model", str(scorer_folder), "--steps", "4"], "need --model"),
        (["--samples", str(tmp_path / "absent.jsonl"), "--scorer-model", str(scorer_folder)], "no such file"),
        (["--samples", str(listed), "--scorer-model", str(scorer_folder), "--scorer-context", "64"],
         "exceeds the scorer's max_position_embeddings"),
    ]
    for arguments, message in cases:
        assert eval_cli(["gen-ppl", *arguments, *common]) == 2, arguments
        assert message in capsys.readouterr().err, arguments
        assert not output.exists()
