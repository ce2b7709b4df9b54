"""Prompt-completion examples for prompt-conditioned masked-diffusion fine-tuning, in TRL's prompt-completion format
(text columns `prompt` and `completion`), from a local .json/.jsonl/.csv/.tsv file or a Hub dataset.

Each example becomes one row of exactly `max_seq_length` tokens: the row-start token, the prompt, the completion,
then the end token (EOS, else [SEP]) repeated to the end of the row. The fill is part of the completion, as in LLaDA's
SFT: the prompted sampler fills every mask of a fixed-length row, so the model must learn to end an answer by writing
EOS up to the row's end (padding that it never attends to would teach it nothing there). A completion too long for
the row is cut; an example whose prompt leaves no room for a completion token is dropped; both are counted in the
log.
"""

import logging

from datasets import Dataset, load_dataset

from trainers.collators import PROMPT_MASK

logger = logging.getLogger(__name__)

PROMPT_COLUMN, COMPLETION_COLUMN = "prompt", "completion"  # TRL's names
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}


def file_format(path: str) -> str:
    """The `datasets` builder reading a prompt-completion file; other extensions are refused."""
    for suffix, builder in FILE_FORMATS.items():
        if path.endswith(suffix):
            return builder
    raise ValueError(f"prompt-completion data is read from {sorted(FILE_FORMATS)} files, got {path!r}")


def load_prompt_completions(data_args, seed: int):
    """(train pairs, validation pairs) of (prompt, completion) strings: from `train_file` (+ `validation_file`), else
    `dataset_name`; without a validation split, the first `validation_fraction` of the training pairs is held out."""
    if data_args.train_file:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        builder = file_format(data_args.train_file)
        options = {"delimiter": "\t"} if data_args.train_file.endswith(".tsv") else {}
        raw = load_dataset(builder, data_files=files, **options)
    elif data_args.dataset_name:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        raise ValueError("the prompt-conditioned objective needs prompt-completion data: train_file or dataset_name")
    train = _pairs(raw["train"], "train")
    if "validation" in raw:
        return train, _pairs(raw["validation"], "validation")
    held_out = max(1, int(len(train) * data_args.validation_fraction))
    if held_out >= len(train):
        raise ValueError(f"{len(train)} prompt-completion pairs leave none to train on after holding out {held_out}")
    return train[held_out:], train[:held_out]


def _pairs(split, name: str):
    missing = [column for column in (PROMPT_COLUMN, COMPLETION_COLUMN) if column not in split.column_names]
    if missing:
        raise ValueError(f"the {name} data lacks the column(s) {missing} of the prompt-completion format (columns: "
                         f"{split.column_names})")
    pairs = list(zip(split[PROMPT_COLUMN], split[COMPLETION_COLUMN]))
    for index, pair in enumerate(pairs):
        if not all(isinstance(text, str) for text in pair):
            raise ValueError(f"{name} example {index}: prompt and completion must be text, got "
                             f"{type(pair[0]).__name__} and {type(pair[1]).__name__} (conversational messages "
                             "need a chat template first)")
    return pairs


def tokenize_prompt_completions(pairs, tokenizer, max_seq_length: int, row_start_id: int, end_id: int) -> Dataset:
    """Rows `[row_start] prompt completion end...end` of `max_seq_length` ids with `attention_mask` (all real) and
    `prompt_mask` (1 on the row start and the prompt). Prompt and completion are tokenized apart, without special
    tokens, so the prompt's tokens are the same whatever follows them (a sampler is given the prompt alone)."""
    prompts = tokenizer([prompt for prompt, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([completion for _, completion in pairs], add_special_tokens=False)["input_ids"]
    rows, prompt_masks, dropped, cut = [], [], 0, 0
    for prompt, completion in zip(prompts, completions):
        head = [row_start_id] + prompt
        if len(head) >= max_seq_length:
            dropped += 1
            continue
        room = max_seq_length - len(head)
        cut += len(completion) + 1 > room  # the end token does not fit after it
        body = (completion + [end_id])[:room]
        rows.append(head + body + [end_id] * (room - len(body)))
        prompt_masks.append([1] * len(head) + [0] * room)
    if dropped or cut:
        logger.warning("prompt-completion rows of %d tokens: dropped %d of %d examples whose prompt fills the row; "
                       "cut %d completions (with their end token) at the row's end", max_seq_length, dropped,
                       len(pairs), cut)
    if not rows:
        raise ValueError(f"every one of the {len(pairs)} prompts fills a row of {max_seq_length} tokens: raise "
                         "max_seq_length or shorten the prompts")
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * max_seq_length for _ in rows],
                              PROMPT_MASK: prompt_masks})


def completion_end_token(tokenizer, mask_token_id: int) -> int:
    """The token that ends a completion and fills its row: the tokenizer's EOS, else its [SEP]."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if token is None or token == mask_token_id:
        raise ValueError("the tokenizer has neither an EOS nor a [SEP] token (other than the mask) to end "
                         "completions with")
    return token
