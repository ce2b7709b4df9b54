"""Tokenizer training: every kind gives the five specials at fixed ids, frame texts with [CLS] ... [SEP], survive a
save/load round trip unchanged, comes out the same in every process, and fix the model's vocab_size and pad id."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from trainers.arguments import ModelArguments
from trainers.embedded_corpus import generate_corpus
from trainers.mlm_config import MaskedLMTrainingArguments
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


TRAIN_IN_A_FRESH_PROCESS = """
import json
from trainers.embedded_corpus import generate_corpus
from trainers.tokenization import train_tokenizer
models = {}
for kind in ("wordpiece", "bpe", "byte_level_bpe"):
    tokenizer = train_tokenizer(generate_corpus(3000, seed=11), vocab_size=400, kind=kind)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    models[kind] = {"vocab": model["vocab"], "merges": model.get("merges")}
print(json.dumps(models))
"""


def test_training_gives_the_same_tokenizer_in_every_process():
    """Two fresh interpreters (other hash seeds; the Rust trainer's hash maps are seeded anew in each) train on the
    same texts: the vocabularies, ids included, and the merges are identical."""
    def train(hash_seed):
        result = subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS], capture_output=True, text=True,
                                env={**os.environ, "PYTHONHASHSEED": str(hash_seed)}, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.splitlines()[-1])

    first, second = train(1), train(2)
    for kind, model in first.items():
        assert model == second[kind], f"{kind}: the two processes trained different tokenizers"


def test_pieces_given_to_the_trainer_are_not_special():
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, kind="bpe")
    assert sorted(tokenizer.all_special_tokens) == sorted(SPECIAL_TOKENS.values())
    assert tokenizer.convert_tokens_to_ids("s</w>") != tokenizer.unk_token_id  # still a piece of the model


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'wordpiece', 'bpe' or 'byte_level_bpe'"):
        train_tokenizer(CORPUS, vocab_size=300, kind="unigram")


def test_model_vocab_and_pad_come_from_the_tokenizer(tmp_path):
    tokenizer = train_tokenizer(CORPUS, vocab_size=257)
    overrides = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40)
    training_args = MaskedLMTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model = build_model(ModelArguments(config_overrides=overrides), training_args, tokenizer, max_seq_length=64)
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelArguments(config_overrides={**overrides, "vocab_size": 512}), training_args, tokenizer, 64)
