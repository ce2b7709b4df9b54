"""Whether a tokenizer, and the token ids it gave, fit a model's vocabulary.

An id outside [0, vocab_size) would index past the embedding table (or, negative, wrap around it), so it is refused,
never clamped. The models check their own inputs too (`modeling/`); these checks run on the CPU ahead of them, name
the sentence or batch row at fault, and let callers switch the models' checks off on an accelerator, where each is a
host-device sync (`modeling.device_value_checks`).
"""

from typing import Optional

import numpy as np


def ids_outside_vocabulary(ids, vocabulary_size: int) -> Optional[str]:
    """What is wrong with `ids` (the token ids of one sequence: a list or an array) for a vocabulary of
    `vocabulary_size`, as "token ids outside [0, V) (min a, max b)"; None when every id fits."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocabulary_size):
        return f"token ids outside [0, {vocabulary_size}) (min {ids.min()}, max {ids.max()})"
    return None


def tokenizer_outside_vocabulary(tokenizer, vocabulary_size: int) -> Optional[str]:
    """What makes `tokenizer` able to emit ids a vocabulary of `vocabulary_size` cannot hold, as "N tokens (largest
    id L) do not fit vocab_size V"; None when all of its ids fit."""
    ids = list(tokenizer.get_vocab().values())
    if len(tokenizer) > vocabulary_size or ids_outside_vocabulary(ids, vocabulary_size):
        return f"{len(tokenizer)} tokens (largest id {max(ids)}) do not fit vocab_size {vocabulary_size}"
    return None


def tokenizer_problems(config, tokenizer, class_name: str) -> list:
    """Everything that makes `tokenizer` unfit for a model with `config` (shared by export and verify)."""
    misfit = tokenizer_outside_vocabulary(tokenizer, config.vocab_size)
    problems = [misfit] if misfit else []
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(config, name, None), getattr(tokenizer, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            problems.append(f"config.{name}={ours} but tokenizer {name}={theirs}")
    if tokenizer.pad_token_id is None:
        problems.append("no pad token, so batches cannot be padded")
    if class_name.endswith("ForMaskedLM") and tokenizer.mask_token_id is None:
        problems.append("no mask token for a masked LM")
    mask_id = getattr(config, "mask_token_id", None)
    if mask_id is not None and tokenizer.mask_token_id is not None and mask_id != tokenizer.mask_token_id:
        problems.append(f"config.mask_token_id={mask_id} but tokenizer mask_token_id={tokenizer.mask_token_id}")
    return problems
