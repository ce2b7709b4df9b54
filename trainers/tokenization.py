"""Train a fast tokenizer on a corpus, so that `vocab_size` and special ids come from it, never by hand."""

import json
from pathlib import Path
from typing import Iterable, List

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hub_exports.tokenizer_files import load_tokenizer

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def _backend(kind: str, vocab_size: int, min_frequency: int):
    specials = list(SPECIAL_TOKENS.values())
    if kind == "byte_level_bpe":
        # Lossless, for models that generate text: every byte is in the alphabet (no [UNK]) and spaces live inside
        # the pieces, so decode(encode(text)) == text. The word-level kinds below split off punctuation and rejoin
        # pieces with spaces ("d'hiver" comes back as "d ' hiver"), which is fine for masked LMs only.
        backend = Tokenizer(models.BPE())
        backend.normalizer = normalizers.NFC()  # canonical composition only: accents stay one code point
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        return backend, trainer
    if kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        backend.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials, continuing_subword_prefix="##")
    elif kind == "bpe":
        backend = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
        backend.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      end_of_word_suffix="</w>")
    else:
        raise ValueError(f"tokenizer kind must be 'wordpiece', 'bpe' or 'byte_level_bpe', got {kind!r}")
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return backend, trainer


def initial_pieces(backend, texts: List[str], kind: str) -> List[str]:
    """The pieces the word-level kinds start from, in the order the trainer gives them ids: the characters of the
    words (sorted, as the trainer sorts them), then those characters with the kind's affix (`e</w>`, `##e`), sorted.

    The trainer adds the affixed ones while it walks its word counts, a hash map whose order changes from one process
    to the next (Rust seeds every map at random, whatever PYTHONHASHSEED or the seed say): their ids came out
    permuted, and since equal-count merges are ranked by the ids of their pieces, the merges could differ too."""
    characters, affixed = set(), set()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            characters.update(word)
            affixed.update([f"{word[-1]}</w>"] if kind == "bpe" else (f"##{character}" for character in word[1:]))
    return sorted(characters) + sorted(affixed)


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "wordpiece", min_frequency: int = 2):
    """A `PreTrainedTokenizerFast` with `[PAD] [UNK] [CLS] [SEP] [MASK]` as ids 0-4 and `[CLS] text [SEP]` framing.
    The same texts give the same tokenizer (vocabulary and merges) in every process."""
    texts = list(texts)
    backend, trainer = _backend(kind, vocab_size, min_frequency)
    if kind != "byte_level_bpe":  # its pieces carry no affix: all of them come from the alphabet, which is sorted
        # Special tokens are the only way to give the trainer vocabulary entries before it counts; these are plain
        # pieces of the model, and are taken off the added (never split) tokens again below.
        trainer.special_tokens = list(SPECIAL_TOKENS.values()) + initial_pieces(backend, texts, kind)
    backend.train_from_iterator(texts, trainer=trainer)
    backend = without_added_tokens_but_specials(backend)
    cls_id, sep_id = backend.token_to_id(SPECIAL_TOKENS["cls"]), backend.token_to_id(SPECIAL_TOKENS["sep"])
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{name}_token": token for name, token in SPECIAL_TOKENS.items()},
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,  # stated in the saved config: decoding must never rewrite " ."
    )


def without_added_tokens_but_specials(backend: Tokenizer) -> Tokenizer:
    state = json.loads(backend.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] in SPECIAL_TOKENS.values()]
    return Tokenizer.from_str(json.dumps(state))


def obtain_tokenizer(model_args, training_args, train_texts):
    """The named tokenizer; for a run continuing `init_from`, the checkpoint's own; on resume, the checkpoint's; else
    one trained on the data by the main process, saved in `output_dir/tokenizer` and loaded from there by the other
    processes, so every rank holds the very same vocab."""
    if model_args.tokenizer_name:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    if getattr(training_args, "init_from", None):
        return load_tokenizer(training_args.init_from)
    if training_args.resume_from_checkpoint:
        return AutoTokenizer.from_pretrained(training_args.resume_from_checkpoint)
    saved = Path(training_args.output_dir) / "tokenizer"
    with training_args.main_process_first(desc="train the tokenizer"):
        if training_args.process_index == 0:
            tokenizer = train_tokenizer(train_texts, model_args.train_tokenizer_vocab_size,
                                        kind=model_args.tokenizer_type)
            tokenizer.save_pretrained(saved)
            return tokenizer
        return AutoTokenizer.from_pretrained(saved)


def document_separator(tokenizer) -> int:
    """The id that ends a document (causal LMs): the tokenizer's EOS (GPT-2: <|endoftext|>), else its [SEP], which
    then becomes its EOS; a tokenizer without a pad token pads with it."""
    if tokenizer.eos_token_id is None:
        if tokenizer.sep_token is None:
            raise ValueError("the tokenizer has neither an EOS nor a [SEP] token to separate documents with")
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is never attended nor counted
    return tokenizer.eos_token_id
