"""Loading the tokenizer a model is exported, converted or trained with, from a tokenizer folder, a Hub name, or a
folder that holds only GPT-2's BPE files (as the GPT-2-based originals ship them)."""

import json
from pathlib import Path

from transformers import AutoTokenizer, GPT2TokenizerFast

from hub_exports.adapter_files import is_adapter_folder, resolve_base_folder


def load_tokenizer(name_or_folder: str):
    """A tokenizer folder or Hub name; a folder holding only GPT-2's BPE files (`vocab.json`/`merges.txt`, optionally
    prefixed `gpt2_`) gives GPT-2's tokenizer, <|endoftext|> (50256) as EOS and BOS. A tokenizer without a pad token
    (GPT-2) pads with its EOS: padding is never attended and never counted, and EOT opens a document anyway. An
    adapter repo gives its base's tokenizer."""
    folder = Path(name_or_folder)
    if is_adapter_folder(folder) and not (folder / "tokenizer_config.json").is_file():
        folder = name_or_folder = resolve_base_folder(folder)  # an adapter repo ships none: its base's is the one
    tokenizer = None
    for prefix in ("", "gpt2_"):
        vocab, merges = folder / f"{prefix}vocab.json", folder / f"{prefix}merges.txt"
        if vocab.is_file() and merges.is_file() and not (folder / "tokenizer_config.json").is_file():
            lines = merges.read_text(encoding="utf-8").splitlines()
            pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
            tokenizer = GPT2TokenizerFast(vocab=json.loads(vocab.read_text(encoding="utf-8")), merges=pairs)
            break
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_folder)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
