"""Log-likelihoods of token sequences under the zoo's language models, for scoring and classification.

* Causal LMs: exact, log p(target | context) = sum of next-token log-probabilities of the target tokens.
* Masked diffusion LMs (MDLM, BD3-LM): a lower bound, minus the NELBO, estimated by Monte Carlo. Each of
  `num_samples` draws picks a time t (antithetic: the draws are stratified over [eps, 1]) and masks every target
  token independently with probability move_chance(t) (BD3-LM: one t per block); the context is never masked. The
  estimate is the mean over draws, reported with its standard error (std of the draws / sqrt(num_samples); the
  stratification makes this conservative).

Common random numbers: the noise is one fixed table per scorer (seed): draw k uses the same t and, at target position
i, the same uniform for every sequence, whatever its content or length (MDLM: counted from the target's start, so also
after contexts of different lengths; BD3-LM: from the sequence's start, as its blocks are). Two sentences of a minimal pair, or one text scored
under every class of a classifier, are therefore compared under the same noise, which removes most of the Monte Carlo
variance from their difference.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List

import torch

from eval_suites.token_sequences import budget_batches, check_sequences
from modeling import device_value_checks, diffusion_policy, require_diffusion_policy
from modeling.mdlm import masked_diffusion_nelbo


@dataclass
class LikelihoodEstimate:
    log_likelihood: float  # nats; for diffusion LMs a lower bound (mean over draws of -NELBO)
    standard_error: float  # of that mean; 0 for exact values
    num_tokens: int  # target tokens scored


def is_diffusion_model(model) -> bool:
    return diffusion_policy(model) is not None


def build_likelihood(model, num_samples: int = 32, seed: int = 0, token_budget: int = 16384):
    """The right estimator for `model`: `DiffusionLikelihood` for MDLM/BD3-LM, else `CausalLikelihood`."""
    if is_diffusion_model(model):
        return DiffusionLikelihood(model, num_samples=num_samples, seed=seed, token_budget=token_budget)
    return CausalLikelihood(model, token_budget=token_budget)


@contextmanager
def evaluation_mode(model):
    """Eval mode (no dropout) while scoring; the caller's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _pad(rows: List[List[int]], pad_id: int, device) -> tuple:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
        attention[index, :len(row)] = 1
    return ids.to(device), attention.to(device)


class CausalLikelihood:
    """Exact log p(target | context) under a causal LM (one label shift; the first target token is scored given the
    context, so pass at least a BOS token as context to score the whole target)."""

    def __init__(self, model, token_budget: int = 16384):
        self.model, self.token_budget = model, token_budget
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    @torch.no_grad()
    def log_likelihood(self, targets, contexts=None) -> List[LikelihoodEstimate]:
        contexts = contexts or [[] for _ in targets]
        rows = [list(c) + list(t) for c, t in zip(contexts, targets)]
        check_sequences(self.model, rows)
        if any(not context for context, target in zip(contexts, targets) if target):
            raise ValueError("a causal LM cannot score the first token without context: give at least BOS")
        device = next(self.model.parameters()).device
        results = [None] * len(rows)
        with evaluation_mode(self.model):
            self._score(rows, contexts, device, results)
        return results

    def _score(self, rows, contexts, device, results) -> None:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for batch in budget_batches([len(rows[i]) for i in order], self.token_budget):
            indices = [order[i] for i in batch]
            ids, attention = _pad([rows[i] for i in indices], self.pad_id, device)
            with device_value_checks(self.model, False):
                logits = self.model(input_ids=ids, attention_mask=attention).logits
            log_probs = logits[:, :-1].float().log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0].double().cpu()
            for row, index in enumerate(indices):
                start, end = len(contexts[index]), len(rows[index])
                total = log_probs[row, start - 1:end - 1].sum().item() if end > start else 0.0
                results[index] = LikelihoodEstimate(total, 0.0, end - start)


class DiffusionLikelihood:
    """Monte-Carlo NELBO lower bound on log p(target | context) for MDLM and BD3-LM, with common random numbers.

    MDLM: draw k has t_k = eps + (1 - eps) (k + v_k) / N (v_k uniform), eps = `config.sampling_eps`; target token i is
    masked when u_{k,i} < move_chance(t_k); its weight is the schedule's sigma'(t)/expm1(sigma(t)).
    BD3-LM: every block b has its own t_{k,b}, stratified the same way over [1e-3, 1] (the interval the bound is
    reported on, whatever the trained clipping); masked when u_{k,i} <= t; weight 1/t. The context should hold whole
    blocks; context tokens inside a target block stay clean. With `ignore_bos` the caller puts BOS in the context.
    """

    NELBO_INTERVAL = (1e-3, 1.0)

    def __init__(self, model, num_samples: int = 32, seed: int = 0, token_budget: int = 16384,
                 shared_noise: bool = True):
        """`shared_noise` (common random numbers, for comparing sequences): one noise table for every sequence. Off
        (for corpus estimates such as perplexity, where a t shared by all sequences would not average out): each
        sequence gets its own table, seeded by its index."""
        self.policy = require_diffusion_policy(model, "DiffusionLikelihood")
        if num_samples < 1:
            raise ValueError("num_samples must be at least 1")
        self.model, self.num_samples, self.token_budget = model, num_samples, token_budget
        self.seed, self.shared_noise = seed, shared_noise
        config = model.config
        self.block_size = self.policy.likelihood_block_size(config)
        self._tables = {}

    def _noise(self, sequence_index: int):
        """(unit times (N, slots), uniforms (N, max length)) of one sequence: a stratified t per draw (MDLM) or per
        draw and block (BD3-LM), and one uniform per draw and position."""
        key = 0 if self.shared_noise else sequence_index + 1
        if key not in self._tables:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
            length, count = self.model.config.max_position_embeddings, self.num_samples
            slots = length // self.block_size if self.block_size else 1
            strata = torch.arange(count, dtype=torch.float64)[:, None]
            unit_times = ((strata + torch.rand((count, slots), generator=generator, dtype=torch.float64))
                          / count).float()
            if not self.shared_noise:
                # Each sequence visits the strata in its own random order, so that draw k of every sequence
                # together is an unbiased corpus estimate (not one confined to stratum k), and the spread over k
                # measures the Monte Carlo error.
                unit_times = unit_times[torch.randperm(count, generator=generator)]
            self._tables[key] = (unit_times, torch.rand((count, length), generator=generator))
            if not self.shared_noise and len(self._tables) > 4096:  # bounded memory on long corpora
                self._tables.pop(next(iter(self._tables)))
        return self._tables[key]

    def _times(self, unit_times: torch.Tensor, length: int) -> torch.Tensor:
        """(N, length) time of every position in every draw."""
        if self.block_size is None:
            eps = self.model.config.sampling_eps
            return ((1 - eps) * unit_times + eps).expand(-1, length)
        low, high = self.NELBO_INTERVAL
        per_block = unit_times * (high - low) + low
        return per_block.repeat_interleave(self.block_size, dim=1)[:, :length]

    def noised(self, sequence: List[int], context_length: int, sequence_index: int = 0):
        """(x_t (N, L), t (N, L), NELBO weights (N, L)) of the N draws for one sequence; context never masked."""
        length = len(sequence)
        unit_times, uniforms = self._noise(sequence_index)
        times = self._times(unit_times, length)
        move_chance, weights = self.model.noise_schedule(times)
        if self.block_size:  # BD3-LM: blocks are absolute, so are the uniforms
            masked = uniforms[:, :length] <= move_chance
        else:  # MDLM: the uniforms follow the target, so a target draws the same noise after any context
            uniforms = torch.cat((torch.ones(self.num_samples, context_length), uniforms[:, :length - context_length]),
                                 dim=1)
            masked = uniforms < move_chance
        masked[:, :context_length] = False
        clean = torch.tensor(sequence, dtype=torch.long).expand(self.num_samples, -1)
        return clean.masked_fill(masked, self.model.config.mask_token_id), times, weights

    @torch.no_grad()
    def log_likelihood(self, targets, contexts=None) -> List[LikelihoodEstimate]:
        contexts = contexts or [[] for _ in targets]
        rows = [list(c) + list(t) for c, t in zip(contexts, targets)]
        check_sequences(self.model, rows)
        mask_id = self.model.config.mask_token_id
        if any(mask_id in row for row in rows):
            raise ValueError(f"sequences to score contain the mask id {mask_id}")
        per_draw = self._per_draw_nelbo(rows, [len(c) for c in contexts])
        results = []
        for index, values in enumerate(per_draw):
            spread = values.std().item() / math.sqrt(self.num_samples) if self.num_samples > 1 else float("nan")
            results.append(LikelihoodEstimate(-values.mean().item(), spread, len(targets[index])))
        return results

    def per_draw_nelbo(self, targets, contexts=None) -> torch.Tensor:
        """(num sequences, N) float64: each draw's NELBO estimate (summed over target tokens); the perplexity suite
        combines them across sequences draw by draw."""
        contexts = contexts or [[] for _ in targets]
        rows = [list(c) + list(t) for c, t in zip(contexts, targets)]
        check_sequences(self.model, rows)
        with torch.no_grad():
            return torch.stack(self._per_draw_nelbo(rows, [len(c) for c in contexts]))

    def _per_draw_nelbo(self, rows, context_lengths) -> List[torch.Tensor]:
        model, device = self.model, next(self.model.parameters()).device
        with evaluation_mode(model):
            return self._accumulate(model, device, rows, context_lengths)

    def _accumulate(self, model, device, rows, context_lengths) -> List[torch.Tensor]:
        pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        totals = [torch.zeros(self.num_samples, dtype=torch.float64) for _ in rows]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        per_batch = max(1, self.token_budget // (self.num_samples * max(1, max(map(len, rows), default=1))))
        with device_value_checks(model, False):  # ids checked above, on the CPU
            for start in range(0, len(order), per_batch):
                indices = order[start:start + per_batch]
                noisy, times, weights, clean, attention = self._batch(indices, rows, context_lengths, pad_id)
                extra = self.policy.forward_inputs(clean.to(device))
                logits = model(input_ids=noisy.to(device), attention_mask=attention.to(device),
                               timesteps=times.to(device)[:, 0] if not self.block_size else times.to(device),
                               **extra).logits
                labels = clean.masked_fill(attention == 0, -100).to(device)
                terms = masked_diffusion_nelbo(logits, noisy.to(device), labels, weights.to(device),
                                               model.config.mask_token_id).double().sum(1).cpu()
                for slot, index in enumerate(indices):
                    totals[index] += terms[slot * self.num_samples:(slot + 1) * self.num_samples]
        return totals

    def _batch(self, indices, rows, context_lengths, pad_id):
        """The N draws of every sequence in `indices`, right-padded to one width (pads: attention 0, weight 0)."""
        width = max(len(rows[i]) for i in indices)
        noisy_rows, time_rows, weight_rows, clean_rows, attention_rows = [], [], [], [], []
        for index in indices:
            sequence = rows[index]
            noisy, times, weights = self.noised(sequence, context_lengths[index], index)
            pad = width - len(sequence)
            noisy_rows.append(torch.nn.functional.pad(noisy, (0, pad), value=pad_id))
            time_rows.append(torch.nn.functional.pad(times, (0, pad), value=1.0))
            weight_rows.append(torch.nn.functional.pad(weights, (0, pad), value=0.0))
            clean_rows.append(torch.nn.functional.pad(torch.tensor(sequence).expand(self.num_samples, -1), (0, pad),
                                                      value=pad_id))
            attention_rows.append(torch.nn.functional.pad(torch.ones(self.num_samples, len(sequence), dtype=torch.long),
                                                          (0, pad), value=0))
        return tuple(torch.cat(parts) for parts in (noisy_rows, time_rows, weight_rows, clean_rows, attention_rows))
