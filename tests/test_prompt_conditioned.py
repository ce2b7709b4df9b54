"""Prompt-conditioned masked-diffusion fine-tuning: the noise never masks the prompt, the loss is the NELBO per
completion token (checked by hand and under gradient accumulation), the prompt-completion data, the refusals, and the
run script fine-tuning a converted original checkpoint on a prompt-completion file."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from hub_exports import load_checkpoint, verify
from hub_exports.__main__ import main as hub_exports_cli
from modeling.diffusion import BD3LM, MDLM
from modeling.mdlm import masked_diffusion_nelbo
from tests.diffusion_trainer_driver import MASK_ID, PAD_ID, VOCAB, one_step, tiny_model
from tests.modeling_common import tiny_tokenizer
from tests.test_mlm_trainer import max_diff
from trainers import run_mdlm
from trainers.collators import DiffusionCollator
from trainers.diffusion_config import check_objective
from trainers.diffusion_trainer import MaskedDiffusionTrainer
from trainers.prompt_completion_data import load_prompt_completions, tokenize_prompt_completions
from transformers import TrainingArguments

PROMPT_LENGTHS = (3, 7, 1, 10)  # rows of 12 tokens: 9, 5, 11 and 2 completion tokens


def prompted_rows() -> Dataset:
    generator = torch.Generator().manual_seed(7)
    ids = [torch.randint(1, MASK_ID, (12,), generator=generator).tolist() for _ in PROMPT_LENGTHS]
    prompts = [[1] * n + [0] * (12 - n) for n in PROMPT_LENGTHS]
    return Dataset.from_dict({"input_ids": ids, "prompt_mask": prompts})


def make_trainer(tmp_path, algorithm="mdlm", **args):
    defaults = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                    report_to="none", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=0)
    return MaskedDiffusionTrainer(model=tiny_model(algorithm), args=TrainingArguments(**{**defaults, **args}),
                                  train_dataset=prompted_rows(), eval_dataset=prompted_rows(), ema_decay=0,
                                  data_collator=DiffusionCollator(PAD_ID, MASK_ID, VOCAB))


@pytest.mark.parametrize("policy", [MDLM, BD3LM], ids=["mdlm", "bd3lm"])
@pytest.mark.parametrize("training", [True, False])
def test_noise_never_masks_the_prompt(policy, training):
    """Many draws (64 generators x 256 rows x 16 tokens): no kept position is ever masked, every other position is
    masked as without `keep` (the same draws), and completions are masked at all t."""
    model = tiny_model(policy.model_type).eval()
    clean = torch.randint(1, MASK_ID, (256, 16), generator=torch.Generator().manual_seed(0))
    keep = torch.arange(16)[None, :] < torch.randint(0, 16, (256, 1), generator=torch.Generator().manual_seed(1))
    masked_completion = 0
    for seed in range(64):
        noisy, t = policy.draw_noise(model, clean, torch.Generator().manual_seed(seed), training, keep)
        free, t_free = policy.draw_noise(model, clean, torch.Generator().manual_seed(seed), training)
        assert torch.equal(noisy[keep], clean[keep]) and torch.equal(t, t_free)
        assert torch.equal(noisy[~keep], free[~keep])
        masked_completion += int((noisy[~keep] == MASK_ID).sum())
    assert masked_completion > 0.2 * 64 * int((~keep).sum())


def test_keep_must_match_the_ids():
    model = tiny_model("mdlm")
    clean = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="keep must be a bool tensor"):
        MDLM.draw_noise(model, clean, torch.Generator().manual_seed(0), True, torch.ones(2, 8, dtype=torch.long))


def test_collator_scores_only_the_completion():
    collator = DiffusionCollator(PAD_ID, MASK_ID, VOCAB)
    batch = collator([{"input_ids": [5, 6, 7, 8], "prompt_mask": [1, 1, 0, 0]},
                      {"input_ids": [9, 10], "prompt_mask": [1, 0]}])
    assert batch["prompt_mask"].dtype == torch.bool
    assert batch["prompt_mask"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="Example 1 of the batch has no prompt_mask"):
        collator([{"input_ids": [5, 6], "prompt_mask": [1, 0]}, {"input_ids": [9, 10]}])
    with pytest.raises(ValueError, match="prompt_mask has 1 positions, input_ids 2"):
        collator([{"input_ids": [5, 6], "prompt_mask": [1]}])


def test_trainer_passes_the_prompt_mask_to_the_collator(tmp_path):
    """Trainer drops dataset columns `forward` does not take; the prompt mask must survive."""
    batch = next(iter(make_trainer(tmp_path).get_train_dataloader()))
    assert sorted(batch["prompt_mask"].sum(1).tolist()) == sorted(PROMPT_LENGTHS)


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_loss_is_the_completion_nelbo_computed_by_hand(tmp_path, algorithm):
    """For the evaluation draw of batch 5: sum over masked completion positions of -log softmax (without the mask
    logit) at x_0, times 1/t (the log-linear schedule's weight), over the number of completion tokens."""
    trainer = make_trainer(tmp_path, algorithm)
    model = trainer.model.eval()
    batch = trainer.data_collator(list(prompted_rows()))
    trainer._eval_batch = 5
    loss = trainer.compute_loss(model, batch)
    clean, prompt = batch["input_ids"], batch["prompt_mask"]
    noisy, t = trainer.draw_noise(model, clean, trainer._generator("eval", 5), False, prompt)
    extra = {"clean_ids": clean} if algorithm == "bd3lm" else {}
    with torch.no_grad():
        logits = model(input_ids=noisy, timesteps=t, **extra).logits.double()
    logits[..., MASK_ID] = float("-inf")
    log_probs = logits.log_softmax(-1).gather(-1, clean[..., None])[..., 0]
    per_token_t = t if t.dim() == 2 else t[:, None].expand_as(clean)
    masked = noisy == MASK_ID
    assert masked.any() and not (masked & prompt).any()
    completion_tokens = int((~prompt).sum())
    assert completion_tokens == 12 * 4 - sum(PROMPT_LENGTHS)
    expected = (-log_probs[masked] / per_token_t[masked]).sum() / completion_tokens
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_gradient_accumulation_is_exact_with_prompts(tmp_path, algorithm):
    """bs 4 x GA 1 = bs 2 x GA 2 = bs 1 x GA 4: the step's completion tokens (9, 5, 11, 2) are the denominator."""
    _, reference = one_step(tmp_path / "a", algorithm, batch_size=4, dataset=prompted_rows())
    for batch_size, ga in ((2, 2), (1, 4)):
        _, params = one_step(tmp_path / f"b{batch_size}", algorithm, batch_size, ga, dataset=prompted_rows())
        assert max_diff(reference, params) < 1e-5, (batch_size, ga)
    _, unconditional = one_step(tmp_path / "u", algorithm, batch_size=4,
                                dataset=prompted_rows().remove_columns("prompt_mask"))
    assert max_diff(reference, unconditional) > 1e-4, "the prompt must change the step"


def test_evaluation_loss_is_per_completion_token_over_the_whole_set(tmp_path):
    """Batches of 2 rows with 14 and 13 completion tokens: eval_loss is sum(NELBO) / 27, recomputed batch by batch
    with the evaluation noise."""
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=2)
    model, rows = trainer.model.eval(), list(prompted_rows())
    totals, counts = 0.0, 0
    for index, start in enumerate(range(0, 4, 2), start=1):
        batch = trainer.data_collator(rows[start:start + 2])
        noisy, t = trainer.draw_noise(model, batch["input_ids"], trainer._generator("eval", index), False,
                                      batch["prompt_mask"])
        with torch.no_grad():
            logits = model(input_ids=noisy, timesteps=t).logits
        totals += masked_diffusion_nelbo(logits, noisy, batch["labels"], model.noise_schedule(t)[1][:, None],
                                         MASK_ID).sum().item()
        counts += batch["labels"].ne(-100).sum().item()
    assert counts == 12 * 4 - sum(PROMPT_LENGTHS)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(totals / counts, rel=1e-5)


# ---- data ----

def word_tokenizer():
    return tiny_tokenizer(40)  # [PAD] [UNK] [CLS] [SEP] [MASK] w5 ... w39


def test_rows_are_prompt_completion_and_end_fill(caplog):
    tokenizer = word_tokenizer()
    pairs = [("w5 w6", " w7"), ("w8", " w9 w10 w11 w12 w13 w14"), ("w5 w6 w7 w8 w9 w10 w11", " w12")]
    with caplog.at_level(logging.WARNING):
        rows = tokenize_prompt_completions(pairs, tokenizer, 8, row_start_id=2, end_id=3)
    assert rows["input_ids"] == [[2, 5, 6, 7, 3, 3, 3, 3], [2, 8, 9, 10, 11, 12, 13, 14]]
    assert rows["prompt_mask"] == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert rows["attention_mask"] == [[1] * 8, [1] * 8]
    assert "dropped 1 of 3 examples" in caplog.text and "cut 1 completions" in caplog.text
    with pytest.raises(ValueError, match="every one of the 1 prompts fills a row of 8 tokens"):
        tokenize_prompt_completions(pairs[2:], tokenizer, 8, row_start_id=2, end_id=3)


def data_args(**fields):
    defaults = dict(train_file=None, validation_file=None, dataset_name=None, dataset_config_name=None,
                    validation_fraction=0.25, packing=False, text_column="text")
    return SimpleNamespace(**{**defaults, **fields})


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv"])
def test_prompt_completion_files_load(tmp_path, suffix):
    pairs = [(f"w{i} w{i + 1}", f" w{i + 2}") for i in range(5, 13)]
    path = tmp_path / f"data{suffix}"
    if suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps({"prompt": p, "completion": c, "id": i}) + "\n"
                                for i, (p, c) in enumerate(pairs)))
    else:
        separator = "\t" if suffix == ".tsv" else ","
        path.write_text(f"prompt{separator}completion\n" + "".join(f"{p}{separator}{c}\n" for p, c in pairs))
    train, held_out = load_prompt_completions(data_args(train_file=str(path)), seed=0)
    assert held_out == pairs[:2] and train == pairs[2:]


def test_prompt_completion_data_is_checked(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "w5", "answer": "w6"}) + "\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['completion'\]"):
        load_prompt_completions(data_args(train_file=str(path)), seed=0)
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "w5"}], "completion": "w6"}) + "\n")
    with pytest.raises(ValueError, match="train example 0: prompt and completion must be text"):
        load_prompt_completions(data_args(train_file=str(path)), seed=0)


@pytest.mark.parametrize("fields, message", [
    ({}, "needs prompt-completion data"),
    ({"train_file": "corpus.txt"}, "read from"),
    ({"train_file": "pairs.jsonl", "validation_file": "held_out.txt"}, "read from"),
    ({"train_file": "pairs.jsonl", "packing": True}, "set packing: false"),
    ({"train_file": "pairs.jsonl", "text_column": "body"}, "text_column 'body' would be ignored"),
])
def test_bad_combinations_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        check_objective(data_args(**fields), SimpleNamespace(prompt_conditioned=True))
    check_objective(data_args(**fields), SimpleNamespace(prompt_conditioned=False))  # the text objective's business


def test_run_refuses_before_reading_any_data(tmp_path, monkeypatch):
    for loader in ("load_texts", "load_prompt_completions"):
        monkeypatch.setattr(run_mdlm, loader, lambda *args, **kwargs: pytest.fail("the run read its data"))
    args = run_mdlm.parse(["--objective", "prompt_conditioned", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="needs prompt-completion data"):
        run_mdlm.main(*args)
    args = run_mdlm.parse(["--objective", "prompt_conditioned", "--train_file", "pairs.jsonl", "--output_dir",
                           str(tmp_path)])  # the tiny preset packs
    with pytest.raises(ValueError, match="set packing: false"):
        run_mdlm.main(*args)
    assert not any(tmp_path.iterdir())


# ---- end to end ----

@pytest.fixture
def converted_original(shared_dir, tmp_path):
    """The original code's tiny MDLM (../shared/fixtures/mdlm/hf) converted by the CLI with a word-level tokenizer
    of 127 ids, to which conversion adds [MASK] = 127 (the original's rule)."""
    tokenizer_dir = tmp_path / "tokenizer"
    tiny_tokenizer(127, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")).save_pretrained(tokenizer_dir)
    out = tmp_path / "converted"
    assert hub_exports_cli(["convert", "mdlm", str(shared_dir / "fixtures" / "mdlm" / "hf"), str(out),
                            "--tokenizer", str(tokenizer_dir)]) == 0
    return out


def test_fine_tune_a_converted_checkpoint_on_prompt_completions(converted_original, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"w{5 + i % 40} w{6 + i % 50}",
                                         "completion": f" w{60 + i % 7} w{70 + i % 9}"}) + "\n" for i in range(64)))
    output = tmp_path / "run"
    args = run_mdlm.parse([str(run_mdlm.DEFAULT_CONFIG.with_name("mdlm_owt_prompted.yaml")),
                           "--init_from", str(converted_original), "--tokenizer_name", str(converted_original),
                           "--train_file", str(pairs), "--max_seq_length", "16", "--output_dir", str(output),
                           "--max_steps", "3", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size",
                           "8", "--bf16", "false", "--tf32", "false", "--use_cpu", "true", "--max_train_minutes",
                           "5", "--dataloader_num_workers", "0", "--warmup_steps", "0", "--logging_steps", "1",
                           "--nelbo_samples", "2", "--nelbo_max_sequences", "4", "--sampling_steps", "4",
                           "--num_samples_to_print", "1"])
    run_mdlm.main(*args)
    assert "NELBO perplexity bound" in capsys.readouterr().out
    verify(output / "export")
    results = json.loads((output / "results.json").read_text())
    assert results["train_steps"] == 3 and results["eval_loss"] > 0
    # the printed sample completes the held-out prompt (the one pair held out)
    assert results["prompted_completions"] == 1 and results["mask_tokens_in_samples"] == 0
    assert 0.0 <= results["prompted_completion_token_agreement"] <= 1.0
    held_out_prompts = [f"w{5 + i % 40} w{6 + i % 50}" for i in range(64)]
    assert any(results["samples"][0].startswith(prompt) for prompt in held_out_prompts)
    tuned, original = load_checkpoint(output / "export"), load_checkpoint(converted_original)
    assert tuned.config.mask_token_id == original.config.mask_token_id == 127
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), original.parameters()))
    card = (output / "export" / "README.md").read_text()
    assert "63 prompt-completion pairs" in card  # 2% (one pair) held out
    assert "conditioned on a prompt" in card
