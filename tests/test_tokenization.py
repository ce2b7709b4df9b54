"""Tokenizer training: every kind gives the five specials at fixed ids, frame texts with [CLS] ... [SEP], survive a
save/load round trip unchanged, and fix the model's vocab_size and pad id."""

import pytest
from transformers import AutoTokenizer

from trainers.arguments import ModelArguments
from trainers.embedded_corpus import generate_corpus
from trainers.run_ltg_bert import build_model
from trainers.tokenization import SPECIAL_TOKENS, train_tokenizer

CORPUS = generate_corpus(3000, seed=11)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "byte_level_bpe"])
def test_trained_tokenizer_round_trips_with_fixed_specials(kind, tmp_path):
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, kind=kind)
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS.values()] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token, tokenizer.mask_token) == ("[PAD]", "[MASK]")
    assert len(tokenizer) <= 300 and tokenizer.is_fast
    sentence = CORPUS[0]
    ids = tokenizer(sentence)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids  # every word of the corpus is spelled out by the learned pieces
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == sentence.replace(" ", "")

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(CORPUS[:50])["input_ids"] == tokenizer(CORPUS[:50])["input_ids"]
    assert reloaded.all_special_ids == tokenizer.all_special_ids


def test_byte_level_bpe_decodes_exactly_what_it_encoded():
    # Text the corpus never showed (French elisions, hyphens, guillemets, a no-break space, an emoji): the byte-level
    # kind gives it back byte for byte with no [UNK]; the word-level BPE detaches the punctuation.
    text = "L'homme à l'arrière-plan\u00a0: « très bien » — 42,5 % 🙂"
    exact = train_tokenizer(CORPUS, vocab_size=400, kind="byte_level_bpe")
    ids = exact(text, add_special_tokens=False).input_ids
    assert exact.unk_token_id not in ids and exact.decode(ids) == text
    lossy = train_tokenizer(CORPUS, vocab_size=400, kind="bpe")
    assert lossy.decode(lossy(text, add_special_tokens=False).input_ids) != text


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'wordpiece', 'bpe' or 'byte_level_bpe'"):
        train_tokenizer(CORPUS, vocab_size=300, kind="unigram")


def test_model_vocab_and_pad_come_from_the_tokenizer():
    tokenizer = train_tokenizer(CORPUS, vocab_size=257)
    overrides = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40)
    model = build_model(ModelArguments(config_overrides=overrides), tokenizer, max_seq_length=64)
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelArguments(config_overrides={**overrides, "vocab_size": 512}), tokenizer, 64)
