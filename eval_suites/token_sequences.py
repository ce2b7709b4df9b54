"""Token-id sequences on their way into a model that scores them: checked against the model on the CPU (ids in its
vocabulary, lengths within its positions; the model's own checks can then stay off on an accelerator), and grouped
into batches under a token budget. Shared by the likelihood estimators and the sentence scorers."""

from typing import List, Sequence

from hub_exports.tokenizer_checks import ids_outside_vocabulary, tokenizer_outside_vocabulary


def check_sequences(model, sequences: Sequence[Sequence[int]], name: str = "sequence") -> None:
    """Fail loudly (never clamp) on the first of `sequences` holding an id outside the model's vocabulary or more
    tokens than its `max_position_embeddings`; `name` is what the message calls one of them."""
    vocab_size, limit = model.config.vocab_size, getattr(model.config, "max_position_embeddings", None)
    for index, ids in enumerate(sequences):
        outside = ids_outside_vocabulary(ids, vocab_size)
        if outside:
            raise ValueError(f"{name} {index} holds {outside}: tokenizer and model differ")
        if limit is not None and len(ids) > limit:
            raise ValueError(f"{name} {index} has {len(ids)} tokens, more than the model's max_position_embeddings "
                             f"({limit})")


def check_encoded(model, tokenizer, encoded_ids: Sequence[Sequence[int]]) -> None:
    """`check_sequences` for sentences `tokenizer` encoded, after checking that the tokenizer belongs to the model
    at all (any id it can emit fits the vocabulary)."""
    misfit = tokenizer_outside_vocabulary(tokenizer, model.config.vocab_size)
    if misfit:
        raise ValueError(f"Tokenizer and model do not belong together: {misfit}")
    check_sequences(model, encoded_ids, "sentence")


def budget_batches(costs: List[int], token_budget: int) -> List[List[int]]:
    """Group item indices (kept in order) into batches whose summed cost stays within `token_budget`."""
    batches, current, used = [], [], 0
    for index, cost in enumerate(costs):
        if current and used + cost > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    return batches + ([current] if current else [])
