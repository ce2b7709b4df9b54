"""Text -> packed token blocks for masked-LM training."""

from datasets import Dataset, load_dataset

from trainers.embedded_corpus import generate_corpus


def load_texts(data_args, seed: int):
    """(train lines, validation lines) from files, or from the embedded corpus when no file is given."""
    if data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        raw = load_dataset("text", data_files=files)
        train = [line for line in raw["train"]["text"] if line.strip()]
        if "validation" in raw:
            return train, [line for line in raw["validation"]["text"] if line.strip()]
    else:
        train = generate_corpus(data_args.embedded_sentences, seed=seed)
    held_out = max(1, int(len(train) * data_args.validation_fraction))
    return train[held_out:], train[:held_out]


def pack_into_blocks(texts, tokenizer, block_size: int) -> Dataset:
    """Tokenize each line as `[CLS] line [SEP]` and cut the concatenation into blocks of `block_size` tokens.

    Lines never need padding and no token is wasted; a block may start mid-sentence, as in BERT pre-training. The
    incomplete last block is dropped.
    """
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    stream = [token for line in ids for token in line]
    usable = len(stream) - len(stream) % block_size
    if usable == 0:
        raise ValueError(f"Corpus has {len(stream)} tokens, fewer than one block of {block_size}")
    blocks = [stream[start:start + block_size] for start in range(0, usable, block_size)]
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]})
