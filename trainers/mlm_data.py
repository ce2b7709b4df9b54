"""Text -> token examples for masked-LM training: from local files, a Hub dataset, or the embedded corpus."""

from datasets import Dataset, load_dataset

from trainers.embedded_corpus import generate_corpus


def _lines(dataset_split, text_column: str):
    if text_column not in dataset_split.column_names:
        raise ValueError(f"Column {text_column!r} not in the data (columns: {dataset_split.column_names})")
    return [line for line in dataset_split[text_column] if line and line.strip()]


def load_texts(data_args, seed: int):
    """(train lines, validation lines). Sources, first match wins: `train_file` (.txt: one text per line;
    .json/.jsonl: `text_column`), `dataset_name` (Hub, needs network), else the embedded corpus. Without a validation
    split, `validation_fraction` of the training lines is held out."""
    raw = None
    if data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        kind = "json" if data_args.train_file.endswith((".json", ".jsonl")) else "text"
        raw = load_dataset(kind, data_files=files)
    elif data_args.dataset_name:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    if raw is None:
        train = generate_corpus(data_args.embedded_sentences, seed=seed)
    else:
        train = _lines(raw["train"], data_args.text_column)
        if "validation" in raw:
            return train, _lines(raw["validation"], data_args.text_column)
    held_out = max(1, int(len(train) * data_args.validation_fraction))
    return train[held_out:], train[:held_out]


def pack_into_blocks(texts, tokenizer, block_size: int, row_start_id=None) -> Dataset:
    """Tokenize each line as `[CLS] line [SEP]` and cut the concatenation into blocks of `block_size` tokens.

    No padding and no token wasted; a block may start mid-sentence, as in BERT pre-training. The incomplete last
    block is dropped. With `row_start_id`, every block starts with that token followed by `block_size - 1` tokens of
    the stream (the diffusion LMs' wrapped rows begin with BOS, which BD3-LM never masks).
    """
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    stream = [token for line in ids for token in line]
    span = block_size - (row_start_id is not None)
    usable = len(stream) - len(stream) % span
    if usable == 0:
        raise ValueError(f"Corpus has {len(stream)} tokens, fewer than one block of {block_size}")
    prefix = [] if row_start_id is None else [row_start_id]
    blocks = [prefix + stream[start:start + span] for start in range(0, usable, span)]
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]})


def chunk_sentences(texts, tokenizer, block_size: int) -> Dataset:
    """Sentence-aware chunks: consecutive lines joined into `[CLS] ... [SEP]` examples of at most `block_size`
    tokens, never cutting a line unless it alone is too long (then it is split). Examples vary in length; the
    collator pads them and the loss never sees the padding."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("sentence-aware chunking frames examples with [CLS] ... [SEP]; the tokenizer lacks them")
    room = block_size - 2
    examples, current = [], []
    for line in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        pieces = [line[start:start + room] for start in range(0, len(line), room)] or [[]]
        for piece in pieces:
            if current and len(current) + len(piece) > room:
                examples.append([cls_id] + current + [sep_id])
                current = []
            current = current + piece
    if current:
        examples.append([cls_id] + current + [sep_id])
    return Dataset.from_dict({"input_ids": examples, "attention_mask": [[1] * len(e) for e in examples]})
