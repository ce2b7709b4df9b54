"""Text -> packed rows for causal-LM pretraining, the speedrun's way: every document starts with the EOT token and
documents are concatenated into one stream, cut into rows of `max_seq_length` tokens (the model's document masking
keeps them from attending to each other)."""

from datasets import Dataset


def pack_documents(texts, tokenizer, max_seq_length: int, eot_token_id: int) -> Dataset:
    """Rows of exactly `max_seq_length` tokens from `[EOT] doc [EOT] doc ...`; the incomplete last row is dropped."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = [token for line in ids for token in [eot_token_id, *line]]
    usable = len(stream) - len(stream) % max_seq_length
    if usable == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one row of {max_seq_length}")
    rows = [stream[start:start + max_seq_length] for start in range(0, usable, max_seq_length)]
    return Dataset.from_dict({"input_ids": rows})


def documents_as_rows(texts, tokenizer, max_seq_length: int, eot_token_id: int) -> Dataset:
    """One `[EOT] doc` row per text, truncated to `max_seq_length` (no packing; the collator pads)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return Dataset.from_dict({"input_ids": [[eot_token_id, *line][:max_seq_length] for line in ids]})
