"""Masked-LM collators: which tokens to predict, and what the model sees in their place.

Both strategies choose positions among real, non-special tokens only (never padding, [CLS], [SEP], ...), put the
original ids in `labels` there and -100 everywhere else, and replace the chosen inputs 80/10/10 by [MASK] / a random
non-special token / the token itself. They differ in how positions are chosen:

* `token`: each maskable token independently with probability `mask_probability` (BERT).
* `span`: whole spans until `mask_probability` of the maskable tokens are covered (LTG-BERT). Span lengths follow a
  geometric distribution (mean `1 / span_geometric_p`) clipped to `[1, max_span_length]`.

The masking of an example is a pure function of (`seed`, `epoch`, the example's token ids): every row draws from its
own generator seeded with a hash of the three (padding excluded). So a resumed run masks every batch exactly as the
uninterrupted run did, whatever the dataloader prefetched, however many workers or processes collate, and whichever
RNG state was restored when (Trainer + accelerate collate a batch ahead of the RNG restore of a mid-epoch resume).
A new epoch masks differently: `MaskingEpochCallback` sets `epoch` before each epoch's dataloader is iterated.
Identical examples within an epoch are masked identically.
"""

import hashlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from transformers import TrainerCallback

from hub_exports.tokenizer_checks import ids_outside_vocabulary

PROMPT_MASK = "prompt_mask"  # the column (and batch key) marking prompt positions of prompt-completion rows


@dataclass
class MaskedLMCollator:
    tokenizer: object
    mask_probability: float = 0.15
    strategy: str = "span"  # "span" or "token"
    max_span_length: int = 10
    span_geometric_p: float = 1 / 3
    random_replace_probability: float = 0.1
    keep_probability: float = 0.1
    seed: int = 0
    epoch: int = 0
    pad_to: Optional[int] = None  # a fixed width for every batch (compiled training on unpacked rows)

    def __post_init__(self):
        if self.strategy not in ("span", "token"):
            raise ValueError(f"strategy must be 'span' or 'token', got {self.strategy!r}")
        if self.tokenizer.mask_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("masked-LM collation needs a tokenizer with [MASK] and [PAD] tokens")
        self.special_ids = np.array(sorted(set(self.tokenizer.all_special_ids)))
        self.vocabulary_size = len(self.tokenizer)  # every batch's ids are checked to lie below it
        vocab_ids = np.arange(self.vocabulary_size)
        self.replacement_ids = vocab_ids[~np.isin(vocab_ids, self.special_ids)]  # random replacements

    def __call__(self, examples):
        # Right padding by hand: per row numpy work is far cheaper than tokenizer.pad on the data-loading hot path.
        width = padded_width(examples, self.pad_to)
        input_ids = np.full((len(examples), width), self.tokenizer.pad_token_id, dtype=np.int64)
        labels = np.full((len(examples), width), -100, dtype=np.int64)
        attention_mask = np.zeros((len(examples), width), dtype=np.int64)
        for row, example in enumerate(examples):
            ids = np.asarray(example["input_ids"], dtype=np.int64)
            check_row_ids(ids, row, self.vocabulary_size)
            real = np.asarray(example.get("attention_mask", np.ones(len(ids))), dtype=bool)
            # Only real tokens are drawn over, so a row is masked alike whatever the padding of its batch.
            corrupted, row_labels = ids.copy(), np.full(len(ids), -100, dtype=np.int64)
            corrupted[real], row_labels[real] = self._mask_row(ids[real], self.row_generator(ids[real]))
            input_ids[row, :len(ids)], labels[row, :len(ids)], attention_mask[row, :len(ids)] = \
                corrupted, row_labels, real
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask),
                "labels": torch.from_numpy(labels)}

    def row_generator(self, input_ids: np.ndarray) -> np.random.Generator:
        """The random stream of one example: seeded by its ids (without padding), the seed and the epoch."""
        key = hashlib.blake2b(input_ids.astype(np.int64).tobytes(), digest_size=8,
                              key=f"{self.seed}:{self.epoch}".encode())
        return np.random.default_rng(int.from_bytes(key.digest(), "little"))

    def _mask_row(self, input_ids: np.ndarray, rng: np.random.Generator):
        maskable = ~np.isin(input_ids, self.special_ids)
        if self.strategy == "span":
            chosen = self._span_positions(maskable, rng)
        else:
            chosen = maskable & (rng.random(len(input_ids)) < self.mask_probability)
        labels = np.where(chosen, input_ids, -100)
        return self._corrupt(input_ids, chosen, rng), labels

    def _span_positions(self, maskable: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = np.zeros_like(maskable)
        candidates = maskable.nonzero()[0]
        budget = int(round(self.mask_probability * len(candidates)))
        covered = 0
        # Spans are laid over the maskable positions (in order), so a span never covers padding or specials and the
        # row gets exactly its budget: the last span is cut to fit.
        while covered < budget:
            length = min(self.max_span_length, int(rng.geometric(self.span_geometric_p)))  # trials to a success
            start = int(rng.integers(len(candidates)))
            span = candidates[start:start + min(length, budget - covered)]
            covered += int((~chosen[span]).sum())
            chosen[span] = True
        return chosen

    def _corrupt(self, input_ids: np.ndarray, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draw = rng.random(len(input_ids))
        mask_below = 1 - self.random_replace_probability - self.keep_probability
        random_tokens = self.replacement_ids[rng.integers(len(self.replacement_ids), size=len(input_ids))]
        corrupted = np.where(chosen & (draw < mask_below), self.tokenizer.mask_token_id, input_ids)
        return np.where(chosen & (draw >= mask_below) & (draw < 1 - self.keep_probability), random_tokens, corrupted)


class MaskingEpochCallback(TrainerCallback):
    """Gives the collator Trainer's seed and the epoch about to start, so every epoch masks afresh and a resumed run
    (which re-enters the interrupted epoch) masks as the uninterrupted one did."""

    def __init__(self, collator: MaskedLMCollator):
        self.collator = collator

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            # Persistent workers keep the collator copy of the first epoch: every epoch would be masked alike.
            raise ValueError("MaskingEpochCallback needs dataloader_persistent_workers=False")
        self.collator.seed = args.data_seed if args.data_seed is not None else args.seed

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional when resuming inside an epoch (e.g. 2.6 during epoch 2); the epsilon guards the
        # float sum that ends an epoch (steps / steps_in_epoch) against landing just below the integer.
        self.collator.epoch = int(state.epoch + 1e-6)


def check_row_ids(ids: np.ndarray, row: int, vocabulary_size: int) -> None:
    """Refuse batch row `row` if it holds an id outside [0, vocabulary_size): checked here on the CPU, so the model's
    own checks can stay off on accelerators."""
    outside = ids_outside_vocabulary(ids, vocabulary_size)
    if outside:
        raise ValueError(f"Example {row} of the batch holds {outside}: it was not tokenized with this tokenizer")


def padded_width(examples, pad_to: Optional[int]) -> int:
    """The batch's width: its longest example, or `pad_to` (a fixed width, so that a compiled step sees one shape)."""
    longest = max(len(example["input_ids"]) for example in examples)
    if pad_to is None:
        return longest
    if longest > pad_to:
        raise ValueError(f"An example of the batch holds {longest} tokens, more than the fixed width pad_to={pad_to}")
    return pad_to


def right_pad_checked(examples, pad_token_id: int, vocabulary_size: int, pad_to: Optional[int] = None):
    """(input_ids, real) numpy arrays of the examples right-padded to the longest (or to `pad_to`); every id must lie
    in [0, vocabulary_size) (`check_row_ids`)."""
    width = padded_width(examples, pad_to)
    input_ids = np.full((len(examples), width), pad_token_id, dtype=np.int64)
    real = np.zeros((len(examples), width), dtype=bool)
    for row, example in enumerate(examples):
        ids = np.asarray(example["input_ids"], dtype=np.int64)
        check_row_ids(ids, row, vocabulary_size)
        input_ids[row, :len(ids)] = ids
        real[row, :len(ids)] = np.asarray(example.get("attention_mask", np.ones(len(ids))), dtype=bool)
    return input_ids, real


@dataclass
class DiffusionCollator:
    """Batches of clean token ids for masked diffusion training; the trainer draws the noise.

    Returns `input_ids` (x_0, right-padded with the pad id), `labels` (x_0 with -100 at padding: the NELBO's
    denominator counts exactly these) and `attention_mask` only when some row is padded (packed data never is, and
    without a mask the attention can take its fastest kernel). Every batch is checked on the CPU: ids must lie in the
    vocabulary and no real token may be the mask id (SUBS would copy it as an already-masked position).

    Prompt-completion rows (a `prompt_mask` column, 1 on the prompt) also give `prompt_mask`, bool (B, L), False at
    padding: the noise never masks those positions, and their labels are -100, so that only completion tokens are
    scored and counted."""

    pad_token_id: int
    mask_token_id: int
    vocabulary_size: int  # ids must lie below it (the model's vocab_size)
    pad_to: Optional[int] = None  # a fixed width, and `attention_mask` on every batch (compiled training)

    def __call__(self, examples):
        input_ids, real = right_pad_checked(examples, self.pad_token_id, self.vocabulary_size, self.pad_to)
        masked_rows = sorted(set(np.nonzero((input_ids == self.mask_token_id) & real)[0].tolist()))
        if masked_rows:
            raise ValueError(f"Example {masked_rows[0]} of the batch contains the mask id {self.mask_token_id} as a "
                             "real token")
        scored = real
        prompt = prompt_positions(examples, input_ids.shape)
        if prompt is not None:
            prompt &= real
            scored = real & ~prompt
        batch = {"input_ids": torch.from_numpy(input_ids),
                 "labels": torch.from_numpy(np.where(scored, input_ids, -100))}
        if self.pad_to is not None or not real.all():
            batch["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        if prompt is not None:
            batch[PROMPT_MASK] = torch.from_numpy(prompt)
        return batch


def prompt_positions(examples, shape):
    """The examples' `prompt_mask` columns right-padded into a bool array of `shape`, or None when no example has
    one; a batch where only some examples have one, or one whose length differs from its ids', is refused."""
    carrying = [PROMPT_MASK in example for example in examples]
    if not any(carrying):
        return None
    if not all(carrying):
        raise ValueError(f"Example {carrying.index(False)} of the batch has no prompt_mask while others have one")
    prompt = np.zeros(shape, dtype=bool)
    for row, example in enumerate(examples):
        mask = np.asarray(example[PROMPT_MASK], dtype=bool)
        if len(mask) != len(example["input_ids"]):
            raise ValueError(f"Example {row} of the batch: prompt_mask has {len(mask)} positions, input_ids "
                             f"{len(example['input_ids'])}")
        prompt[row, :len(mask)] = mask
    return prompt


@dataclass
class CausalLMCollator:
    """Batches for causal-LM training: `input_ids` right-padded with the pad id, `labels` = the ids with -100 at
    padding, and `attention_mask` only when some row is padded (packed rows never are).

    The model shifts the labels once (position t predicts labels[t + 1]); the first label of every row is -100 too,
    since no position predicts it, so that counting `labels != -100` (Trainer's normaliser) counts exactly the
    predicted tokens. Every batch's ids are checked on the CPU against `vocabulary_size` (the tokenizer's size)."""

    pad_token_id: int
    vocabulary_size: int
    pad_to: Optional[int] = None  # a fixed width, and `attention_mask` on every batch (compiled training)

    def __call__(self, examples):
        input_ids, real = right_pad_checked(examples, self.pad_token_id, self.vocabulary_size, self.pad_to)
        labels = np.where(real, input_ids, -100)
        labels[:, 0] = -100
        batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
        if self.pad_to is not None or not real.all():
            batch["attention_mask"] = torch.from_numpy(real.astype(np.int64))
        return batch
