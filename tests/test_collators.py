"""Masked-LM collators: only real, non-special tokens are ever predicted; budgets and 80/10/10 proportions hold."""

import pytest
import torch

from tests.modeling_common import tiny_tokenizer
from trainers.collators import CausalLMCollator, DiffusionCollator, MaskedLMCollator
from trainers.mlm_data import chunk_sentences, pack_into_blocks

TOKENIZER = tiny_tokenizer(300)


def examples(count=64, generator=None):
    generator = generator or torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        length = int(torch.randint(8, 40, (), generator=generator))
        body = torch.randint(5, 300, (length,), generator=generator).tolist()
        rows.append({"input_ids": [2] + body + [3], "attention_mask": [1] * (length + 2)})
    return rows


@pytest.mark.parametrize("strategy", ["span", "token"])
def test_only_real_non_special_tokens_are_predicted(strategy):
    collator = MaskedLMCollator(TOKENIZER, strategy=strategy, seed=1)
    rows = examples()
    batch = collator(rows)
    original = collator.tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")["input_ids"]
    labelled = batch["labels"] != -100
    assert not (labelled & (batch["attention_mask"] == 0)).any(), "padding is predicted"
    assert not (labelled & torch.isin(original, torch.tensor([0, 1, 2, 3, 4]))).any(), "special tokens are predicted"
    assert torch.equal(batch["labels"][labelled], original[labelled]), "labels must hold the original ids"
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled]), "unchosen tokens must stay unchanged"


def test_span_masking_hits_the_budget_per_row_in_contiguous_spans():
    collator = MaskedLMCollator(TOKENIZER, strategy="span", seed=2)
    rows = examples()
    labelled = collator(rows)["labels"] != -100
    for row, example in enumerate(rows):
        maskable = len(example["input_ids"]) - 2
        assert labelled[row].sum().item() == round(0.15 * maskable)
    runs = [len(run) for row in labelled for run in "".join("x" if v else " " for v in row.tolist()).split()]
    assert sum(runs) / len(runs) > 1.5, "span masking should produce multi-token spans"


def test_replacement_proportions_are_80_10_10():
    collator = MaskedLMCollator(TOKENIZER, strategy="token", mask_probability=0.5, seed=3)
    rows = examples(count=400)
    batch = collator(rows)
    original = collator.tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")["input_ids"]
    labelled = batch["labels"] != -100
    shown = batch["input_ids"][labelled]
    masked = (shown == TOKENIZER.mask_token_id).float().mean().item()
    kept = (shown == original[labelled]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 295, abs=0.02)  # kept, plus random draws of the same token
    assert not torch.isin(shown, torch.tensor([0, 1, 2, 3])).any(), "random replacements must not be specials"


def test_masking_depends_only_on_seed_epoch_and_the_example():
    rows = examples(count=6)
    collator = MaskedLMCollator(TOKENIZER, seed=5)
    together = collator(rows)
    torch.manual_seed(123)  # the global RNG plays no part
    alone = [collator([row]) for row in rows[::-1]][::-1]  # other batches, other padding, other order
    for index, single in enumerate(alone):
        length = len(rows[index]["input_ids"])
        for key in ("input_ids", "labels"):
            assert torch.equal(single[key][0], together[key][index, :length])
    collator.epoch = 1
    next_epoch = collator(rows)
    collator.epoch, collator.seed = 0, 6
    other_seed = collator(rows)
    assert not torch.equal(next_epoch["labels"], together["labels"])
    assert not torch.equal(other_seed["labels"], together["labels"])


def test_packing_and_sentence_chunking():
    texts = [" ".join(f"w{5 + (i * 7 + j) % 290}" for j in range(n)) for i, n in enumerate([5, 9, 3, 30, 2, 12])]
    packed = pack_into_blocks(texts, TOKENIZER, 16)
    assert all(len(ids) == 16 for ids in packed["input_ids"])
    chunks = chunk_sentences(texts, TOKENIZER, 16)
    assert all(len(ids) <= 16 and ids[0] == 2 and ids[-1] == 3 for ids in chunks["input_ids"])
    flattened = [t for ids in chunks["input_ids"] for t in ids if t not in (2, 3)]
    assert flattened == [t for text in texts for t in TOKENIZER(text, add_special_tokens=False)["input_ids"]]
    assert len(chunks["input_ids"][0]) == 2 + 5 + 9  # whole sentences joined while they fit


def test_ids_outside_the_tokenizer_are_rejected_on_the_cpu():
    """The collator range-checks every batch (MaskedLMTrainer relies on it to turn the model's device-side checks,
    each a host-device sync, off)."""
    collator = MaskedLMCollator(TOKENIZER, seed=0)
    rows = examples(4)
    rows[2] = {"input_ids": rows[2]["input_ids"][:-1] + [len(TOKENIZER)]}
    with pytest.raises(ValueError, match=r"Example 2 .* outside \[0, 300\)"):
        collator(rows)
    rows[2] = {"input_ids": [-1, 7]}
    with pytest.raises(ValueError, match="outside"):
        collator(rows)


def test_pad_to_gives_every_batch_one_width_and_a_mask():
    """Compiled training on unpacked rows (trainers.compiled.fixed_batch_width): one shape and one set of inputs."""
    rows = [{"input_ids": [7, 8, 9]}, {"input_ids": [7, 8, 9, 10, 11]}]
    for collator in (DiffusionCollator(0, 4, 20, pad_to=8), CausalLMCollator(0, 20, pad_to=8)):
        batch = collator(rows)
        assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].tolist()[1] == [1] * 5 + [0] * 3
        assert (batch["labels"][:, 5:] == -100).all()
        full = collator([{"input_ids": list(range(5, 13))}] * 2)  # no padding at all: the mask is still given
        assert full["attention_mask"].all() and full["input_ids"].shape == (2, 8)
        with pytest.raises(ValueError, match="more than the fixed width pad_to=4"):
            type(collator)(**{**collator.__dict__, "pad_to": 4})(rows)
    unpadded = DiffusionCollator(0, 4, 20)([{"input_ids": [7, 8, 9]}] * 2)
    assert "attention_mask" not in unpadded and unpadded["input_ids"].shape == (2, 3)
    ids = TOKENIZER("the cat sat", add_special_tokens=True).input_ids
    assert MaskedLMCollator(TOKENIZER, pad_to=16)([{"input_ids": ids}])["input_ids"].shape == (1, 16)


def test_classification_batches_are_padded_to_max_seq_length_only_when_compiled():
    from types import SimpleNamespace

    from trainers.run_classification import padding_collator

    rows = [{"input_ids": TOKENIZER("the cat").input_ids, "labels": 0}, {"input_ids": TOKENIZER("a").input_ids,
                                                                         "labels": 1}]
    eager = padding_collator(TOKENIZER, 16, SimpleNamespace(torch_compile=False))(rows)
    compiled = padding_collator(TOKENIZER, 16, SimpleNamespace(torch_compile=True))(rows)
    assert eager["input_ids"].shape == (2, len(rows[0]["input_ids"])) and compiled["input_ids"].shape == (2, 16)
    assert compiled["attention_mask"].sum() == eager["attention_mask"].sum()
