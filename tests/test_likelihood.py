"""Likelihood estimators: exact causal scores, the diffusion NELBO bound (its expectation, common random numbers, its
standard error), the perplexity report, and the BLiMP ELBO scorer."""

import math
import statistics

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from eval_suites.blimp import MinimalPair, evaluate_blimp
from eval_suites.likelihood import CausalLikelihood, DiffusionLikelihood
from eval_suites.perplexity import perplexity_report
from eval_suites.scoring import ElboScorer
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
from tests.modeling_common import tiny_tokenizer

SIZES = dict(vocab_size=40, mask_token_id=4, pad_token_id=0, bos_token_id=1, hidden_size=32,
             num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0,
             zero_init_modulation=False)


def mdlm():
    torch.manual_seed(0)
    return MdlmForMaskedDiffusionLM(MdlmConfig(**SIZES)).eval()


def rows(count, length=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 40, (length,), generator=generator).tolist() for _ in range(count)]


def test_causal_likelihood_is_the_sum_of_next_token_log_probs():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=1, n_head=2)).eval()
    context, target = [1, 7], [9, 11, 13]
    estimate = CausalLikelihood(model).log_likelihood([target], [context])[0]
    with torch.no_grad():
        log_probs = model(torch.tensor([context + target])).logits[0].log_softmax(-1)
    expected = sum(log_probs[position - 1, token].item() for position, token in enumerate(context + target)
                   if position >= len(context))
    assert estimate.log_likelihood == pytest.approx(expected, abs=1e-5) and estimate.standard_error == 0


def test_one_token_bound_matches_its_expectation():
    """For a single masked-able token the NELBO is E_t[w(t) 1(masked) (-log p)] = (1 - eps)(-log p) under the
    log-linear schedule: the Monte Carlo estimate must agree within a few standard errors."""
    model = mdlm()
    context, target = [1, 5, 6, 7], [9]
    estimate = DiffusionLikelihood(model, num_samples=2048, seed=0).log_likelihood([target], [context])[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + [4]])).logits[0, -1]
    logits[4] = float("-inf")
    expected = (1 - 1e-3) * logits.log_softmax(-1)[9].item()
    assert abs(estimate.log_likelihood - expected) < 4 * estimate.standard_error
    assert estimate.standard_error < 0.1 * abs(expected)


def test_shared_noise_compares_sequences_under_the_same_draws():
    model = mdlm()
    likelihood = DiffusionLikelihood(model, num_samples=16, seed=3)
    same, also_same, other = likelihood.log_likelihood([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 9]])
    assert same.log_likelihood == also_same.log_likelihood
    # The same t and the same masked positions for any content, and for a longer sequence on the shared positions
    first, first_t, _ = likelihood.noised([5, 6, 7, 8], 0)
    second, second_t, _ = likelihood.noised([9, 10, 11, 12, 13, 14], 0)
    assert torch.equal(first == 4, (second == 4)[:, :4]) and torch.equal(first_t, second_t[:, :4])
    assert (first == 4).any() and not (first == 4).all()


@pytest.mark.parametrize("build", ["mdlm", "bd3lm"])
def test_perplexity_standard_error_measures_the_monte_carlo_spread(build):
    """Repeating the estimate with other seeds spreads it about as much as the reported standard error says
    (a standard error computed within strata was 5-10x too large)."""
    torch.manual_seed(0)
    model = mdlm() if build == "mdlm" else Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**SIZES, block_size=4)).eval()
    data = rows(32)
    reports = [perplexity_report(model, data, num_samples=8, seed=seed) for seed in range(12)]
    spread = statistics.stdev(r["nll_per_token"] for r in reports)
    reported = statistics.mean(r["standard_error"] for r in reports)
    assert 0.4 < reported / spread < 2.5, (reported, spread)
    first = reports[0]
    assert first["perplexity"] == pytest.approx(math.exp(first["nll_per_token"]))
    assert first["num_tokens"] == 32 * (15 if build == "bd3lm" else 16)  # BD3-LM: BOS is context (ignore_bos)


def test_elbo_scorer_plugs_into_blimp():
    model = mdlm()
    tokenizer = tiny_tokenizer(40)
    scorer = ElboScorer(model, tokenizer, num_samples=8)
    good, bad, good_again = scorer.score(["w5 w6 w7", "w5 w6 w8", "w5 w6 w7"])
    assert good == good_again and good != bad
    pairs = [MinimalPair("w5 w6 w7", "w5 w6 w8", "p", "p", "0"), MinimalPair("w9 w10", "w9 w11", "p", "p", "1")]
    result = evaluate_blimp(model, tokenizer, pairs, scorer="elbo")
    assert result["num_pairs"] == 2 and result["scorer"] == "elbo" and 0 <= result["accuracy"] <= 1


def test_mdlm_noise_follows_the_target_whatever_the_context_length():
    """A classifier's prompts may differ in length: the text must still see the same t and mask pattern."""
    likelihood = DiffusionLikelihood(mdlm(), num_samples=8, seed=1)
    target = [9, 10, 11, 12, 13]
    short, short_t, _ = likelihood.noised([1] + target, 1)
    long, long_t, _ = likelihood.noised([1, 2, 3] + target, 3)
    assert torch.equal(short[:, 1:] == 4, long[:, 3:] == 4) and torch.equal(short_t[:, 0], long_t[:, 0])
    assert not (long[:, :3] == 4).any()
