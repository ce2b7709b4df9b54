"""The wire's tokenizer: UTF-8 bytes as ids 0-255 and [PAD] as 256, as a plain `PreTrainedTokenizerFast` (it is saved
with every export as tokenizer.json and loads with `AutoTokenizer`, no remote code)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def byte_tokenizer(max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level pieces without merges: every UTF-8 byte is one token whose id is the byte's value, so any text
    encodes with no unknown token and decodes back exactly; right padding with [PAD] = 256."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins, one per byte
    byte_of = {symbol: byte for byte, symbol in enumerate(_bytes_to_symbols())}
    if set(byte_of) != set(alphabet):
        raise RuntimeError("tokenizers changed its ByteLevel alphabet: the byte ids would no longer be the bytes")
    backend = Tokenizer(models.BPE(vocab={**byte_of, "[PAD]": 256}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["[PAD]"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", model_max_length=max_length,
                                   padding_side="right", clean_up_tokenization_spaces=False,
                                   model_input_names=["input_ids", "attention_mask"])


def _bytes_to_symbols() -> list:
    """GPT-2's byte -> printable character table (the one `ByteLevel` uses): printable Latin-1 bytes map to
    themselves, the other 68 to code points from 256 on, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols
