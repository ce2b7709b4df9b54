"""Sentence log-likelihood scorers: sum of natural-log token probabilities, batched under a token budget.

* `pll` (masked LMs; Salazar et al., 2020): every non-special token is masked once, alone; its log-probability given
  the rest is summed. The tokenizer's framing is kept as it is (e.g. `[CLS] ... [SEP]` for BERT-style tokenizers) and
  special tokens are never masked nor scored.
* `pll_word_l2r` (masked LMs; Kauf & Ivanova, 2023): as `pll`, but when scoring a token, the later tokens of the same
  word are masked too, so multi-token words are not inflated. Needs a fast tokenizer (`word_ids`).
* `elbo` (masked diffusion LMs): minus the NELBO with noise shared across sentences (`eval_suites.likelihood`).
* `causal` (causal LMs): sum of log p(token_t | tokens_<t). A BOS token is prepended when the tokenizer has one
  (else EOS, as lm-evaluation-harness does), so the first word is scored; with neither, the first token is unscored.

Other objectives plug in through `register_scorer(name, factory)` (e.g. a diffusion ELBO scorer): a factory takes
`(model, tokenizer, **options)` and returns an object with `score(sentences) -> list[float]`.
"""

from typing import Callable, Dict, List

import numpy as np
import torch

from eval_suites.likelihood import DiffusionLikelihood
from eval_suites.token_sequences import budget_batches, check_encoded
from modeling import device_value_checks, supports_sparse_prediction

SCORERS: Dict[str, Callable] = {}


def register_scorer(name: str, factory: Callable) -> None:
    SCORERS[name] = factory


def build_scorer(name: str, model, tokenizer, **options):
    if name not in SCORERS:
        raise ValueError(f"Unknown scorer {name!r}; available: {sorted(SCORERS)}")
    return SCORERS[name](model, tokenizer, **options)


class MaskedLMScorer:
    """Pseudo-log-likelihood of sentences under a masked LM (see the module docstring for `metric`)."""

    def __init__(self, model, tokenizer, metric: str = "pll", token_budget: int = 8192, torch_compile: bool = False):
        """`torch_compile`: run the model under `torch.compile` with dynamic shapes, so that batches of every (copies,
        length) share one compiled encoder (the sparse head's selection of positions is a graph break); compilation
        takes tens of seconds on the first batch, repaid on large sets (BLiMP's 134k sentences)."""
        if metric not in ("pll", "pll_word_l2r"):
            raise ValueError(f"metric must be 'pll' or 'pll_word_l2r', got {metric!r}")
        if tokenizer.mask_token_id is None:
            raise ValueError("Pseudo-log-likelihood needs a tokenizer with a mask token")
        self.model, self.tokenizer, self.metric, self.token_budget = model.eval(), tokenizer, metric, token_budget
        self.forward = torch.compile(self.model, dynamic=True) if torch_compile else self.model
        # Each masked copy needs the vocabulary distribution at one position only; models that can run their head on
        # the labelled positions alone (hubzoo's `sparse_prediction`) skip the (copies x length x vocab) logits.
        self.sparse_head = supports_sparse_prediction(model)
        # In the last `score` call: positions the encoder ran over (padding included), and positions scored
        self.forward_tokens = self.scored_positions = 0

    def _encode(self, sentences):
        encoded = self.tokenizer(list(sentences), return_special_tokens_mask=True)
        check_encoded(self.model, self.tokenizer, encoded["input_ids"])
        units = []  # one unit per sentence: ids, scorable positions, word id per position
        for row, ids in enumerate(encoded["input_ids"]):
            special = encoded["special_tokens_mask"][row]
            words = encoded.word_ids(row) if self.metric == "pll_word_l2r" else [None] * len(ids)
            positions = [p for p in range(len(ids)) if not special[p]]
            units.append((ids, positions, [-1 if w is None else w for w in words]))
        return units

    @torch.no_grad()
    def score(self, sentences: List[str]) -> List[float]:
        if not sentences:
            return []
        units = self._encode(sentences)  # ids range-checked here, on the CPU
        # Sort by length so batches pad little; each sentence costs (#copies x length) tokens.
        order = sorted(range(len(units)), key=lambda i: len(units[i][0]))
        costs = [max(1, len(units[i][1])) * len(units[i][0]) for i in order]
        device = next(self.model.parameters()).device
        # Totals stay on the device until the end, and the model's own range checks (syncs on an accelerator) are off:
        # the scorer adds no host-device sync per batch (the sparse head's position selection is the model's one).
        totals = torch.zeros(len(units), dtype=torch.float64, device=device)
        self.forward_tokens = self.scored_positions = 0
        with device_value_checks(self.model, False):
            for batch in budget_batches(costs, self.token_budget):
                indices = [order[i] for i in batch]
                scores = self._score_batch([units[i] for i in indices])
                totals.index_add_(0, torch.tensor(indices, device=device), scores)
        return totals.tolist()

    def _score_batch(self, units) -> torch.Tensor:
        """Summed log-probabilities of `units` (on the model's device). Index arithmetic is vectorised: no Python
        loop over masked copies, one over sentences only to concatenate their token lists."""
        device = next(self.model.parameters()).device
        lengths = np.array([len(ids) for ids, _, _ in units])
        rows, columns = np.repeat(np.arange(len(units)), lengths), np.arange(lengths.sum()) - np.repeat(
            np.cumsum(lengths) - lengths, lengths)
        ids = np.full((len(units), lengths.max()), self.tokenizer.pad_token_id, dtype=np.int64)
        words = np.full(ids.shape, -1, dtype=np.int64)
        ids[rows, columns] = np.concatenate([unit_ids for unit_ids, _, _ in units])
        words[rows, columns] = np.concatenate([unit_words for _, _, unit_words in units])
        ids, words = torch.from_numpy(ids), torch.from_numpy(words)
        attention = (torch.arange(ids.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]).long()
        counts = torch.tensor([len(positions) for _, positions, _ in units])
        if not counts.any():  # nothing to mask (e.g. empty sentences without special tokens): log-likelihood 0
            return torch.zeros(len(units), dtype=torch.float64, device=device)
        sentence = torch.repeat_interleave(torch.arange(len(units)), counts)  # (C,) sentence of each masked copy
        position = torch.from_numpy(np.concatenate([positions for _, positions, _ in units]).astype(np.int64))
        copies = torch.arange(len(sentence))
        targets = ids[sentence, position]
        to_mask = torch.zeros((len(sentence), ids.shape[1]), dtype=torch.bool)
        to_mask[copies, position] = True
        if self.metric == "pll_word_l2r":  # also hide the rest of the word, to the right of the target
            same_word = words[sentence] == words[sentence, position][:, None]
            to_mask |= same_word & (torch.arange(ids.shape[1])[None, :] > position[:, None]) & (words[sentence] >= 0)
        masked = torch.where(to_mask, self.tokenizer.mask_token_id, ids[sentence])
        self.forward_tokens += masked.numel()
        self.scored_positions += len(copies)
        inputs = {"input_ids": masked.to(device), "attention_mask": attention[sentence].to(device)}
        if self.sparse_head:  # one label per copy, so the (C, V) rows come back in copy order
            labels = torch.full_like(masked, -100)
            labels[copies, position] = targets
            logits = self.forward(**inputs, labels=labels.to(device), sparse_prediction=True).logits
        else:
            logits = self.forward(**inputs).logits[copies.to(device), position.to(device)]
        token_scores = logits.float().log_softmax(-1).gather(1, targets.to(device)[:, None])[:, 0].double()
        return torch.zeros(len(units), dtype=torch.float64, device=device).index_add_(0, sentence.to(device),
                                                                                      token_scores)


class CausalLMScorer:
    """Sum of next-token log-probabilities under a causal LM."""

    def __init__(self, model, tokenizer, token_budget: int = 8192):
        self.model, self.tokenizer, self.token_budget = model.eval(), tokenizer, token_budget
        self.prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        self.prefix = [i for i in self.prefix if i is not None]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score(self, sentences: List[str]) -> List[float]:
        if not sentences:
            return []
        encoded = [self.prefix + ids for ids in self.tokenizer(list(sentences), add_special_tokens=False)["input_ids"]]
        check_encoded(self.model, self.tokenizer, encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        totals = torch.zeros(len(encoded), dtype=torch.float64)
        with device_value_checks(self.model, False):  # ids checked above, on the CPU
            for batch in budget_batches([len(encoded[i]) for i in order], self.token_budget):
                indices = [order[i] for i in batch]
                totals[torch.tensor(indices)] = self._score_batch([encoded[i] for i in indices])
        return totals.tolist()

    def _score_batch(self, sequences) -> torch.Tensor:
        device = next(self.model.parameters()).device
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, sequence in enumerate(sequences):  # right padding: earlier positions never see the pads
            ids[row, :len(sequence)] = torch.tensor(sequence)
            attention[row, :len(sequence)] = 1
        logits = self.model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
        log_probs = logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None].to(device))[..., 0]
        return (log_probs.double().cpu() * attention[:, 1:]).sum(1)


register_scorer("pll", lambda model, tokenizer, **kw: MaskedLMScorer(model, tokenizer, metric="pll", **kw))
register_scorer("pll_word_l2r",
                lambda model, tokenizer, **kw: MaskedLMScorer(model, tokenizer, metric="pll_word_l2r", **kw))
register_scorer("causal", lambda model, tokenizer, **kw: CausalLMScorer(model, tokenizer, **kw))


class ElboScorer:
    """Sentence scores for minimal pairs from a masked diffusion LM: minus the NELBO of the sentence's tokens given
    the tokenizer's leading special tokens (e.g. [CLS]), with `num_samples` draws of noise shared by every sentence
    (common random numbers), so the two sentences of a pair are compared under the same t and mask uniforms."""

    def __init__(self, model, tokenizer, num_samples: int = 32, seed: int = 0, token_budget: int = 16384):
        self.tokenizer = tokenizer
        self.likelihood = DiffusionLikelihood(model, num_samples, seed, token_budget, shared_noise=True)

    def score(self, sentences: List[str]) -> List[float]:
        if not sentences:
            return []
        encoded = self.tokenizer(list(sentences), return_special_tokens_mask=True)
        contexts, targets = [], []
        for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"]):
            lead = next((i for i, flag in enumerate(special) if not flag), len(ids))
            contexts.append(ids[:lead])
            targets.append(ids[lead:])
        return [estimate.log_likelihood for estimate in self.likelihood.log_likelihood(targets, contexts)]


register_scorer("elbo", ElboScorer)
