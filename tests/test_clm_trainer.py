"""CausalLMTrainer and its pieces: the loss (one shift, padding and row starts never counted), gradient accumulation
and two processes equal to one big batch, exact resume with Muon and the trapezoid schedule, the exact evaluation
loss, the collator, the packing, Muon itself, and the run script's checks."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.clm_trainer_driver import PAD_ID, REAL_PER_ROW, VOCAB, make_trainer, one_step, rows_dataset, tiny_model
from tests.modeling_common import tiny_tokenizer
from tests.test_diffusion_trainer import StopAt
from tests.test_mlm_trainer import launch_two_processes, max_diff
from trainers import run_modded_gpt
from trainers.clm_data import pack_documents
from trainers.collators import CausalLMCollator
from trainers.muon import MuonWithAdamW, muon_param_groups, orthogonalize

DRIVER = Path(__file__).with_name("clm_trainer_driver.py")


def direct_loss(model, rows):
    """Sum over rows of the next-token cross-entropies of each unpadded row on its own, / tokens predicted."""
    total, count = 0.0, 0
    for row in rows:
        ids = torch.tensor([row])
        logits = model(ids).logits[0]
        total += F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum")
        count += len(row) - 1
    return total / count, count


def test_collator_shifts_nothing_and_hides_padding_and_row_starts():
    batch = CausalLMCollator(PAD_ID, VOCAB)(list(rows_dataset()))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == (4, 12) and torch.equal(mask.sum(1), torch.tensor(REAL_PER_ROW))
    assert (labels[:, 0] == -100).all()
    assert torch.equal(labels[:, 1:][mask[:, 1:].bool()], ids[:, 1:][mask[:, 1:].bool()])
    assert (labels[~mask.bool()] == -100).all() and labels.ne(-100).sum() == sum(REAL_PER_ROW) - 4
    with pytest.raises(ValueError, match=r"outside \[0, 60\)"):
        CausalLMCollator(PAD_ID, VOCAB)([{"input_ids": [1, 2, 60]}])
    packed = CausalLMCollator(PAD_ID, VOCAB)([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    assert "attention_mask" not in packed


def test_loss_is_the_mean_over_predicted_tokens(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model.eval()
    rows = list(rows_dataset())
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        expected, count = direct_loss(model, [row["input_ids"] for row in rows])
    assert count == sum(REAL_PER_ROW) - 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_gradient_accumulation_is_exact(tmp_path, optimizer):
    """bs 4 x GA 1 = bs 2 x GA 2 = bs 1 x GA 4 after one step. SGD (lr 1) shows any mis-scaled gradient; Muon and
    AdamW normalise the scale away, so for them this checks the step itself (on the CPU Newton-Schulz runs in fp32;
    in bf16 the other summation order of the gradient moved the update by one bf16 ulp, 2.5e-3)."""
    tolerance = 1e-5
    _, reference = one_step(tmp_path / "a", optimizer, batch_size=4)
    for batch_size, ga in ((2, 2), (1, 4)):
        _, params = one_step(tmp_path / f"b{batch_size}", optimizer, batch_size=batch_size, ga=ga)
        assert max_diff(reference, params) < tolerance, (batch_size, ga)
    assert max_diff(reference, dict(tiny_model().named_parameters())) > 1e-2, "the step must move the weights"


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    from safetensors.torch import load_file

    out = launch_two_processes(DRIVER, tmp_path, tmp_path / "two.safetensors", "--optimizer", "sgd", "--batch-size",
                               "2", "--world-size", "2")
    assert sorted(re.findall(r"rank=\d world_size=2", out.stdout)) == ["rank=0 world_size=2", "rank=1 world_size=2"]
    _, one = one_step(tmp_path / "one", "sgd", batch_size=4)
    assert max_diff(one, load_file(tmp_path / "two.safetensors")) < 1e-5


def test_resume_is_exact_with_muon_and_the_trapezoid(tmp_path):
    """Stop after step 3 (checkpoint), resume to step 8: losses and weights equal the uninterrupted run's (Muon's
    momentum, AdamW's moments and the warmup-stable-decay schedule all come back)."""
    def make(output_dir, callbacks=()):
        return make_trainer(output_dir, "muon", callbacks, max_steps=8, save_strategy="steps", save_steps=3,
                            per_device_train_batch_size=2, lr_scheduler_type="warmup_stable_decay",
                            cooldown_fraction=0.5, warmup_steps=2)

    straight = make(tmp_path / "straight")
    straight.train()
    rates = [e["learning_rate"] for e in straight.state.log_history if "learning_rate" in e]
    assert rates[2] == rates[3] > rates[-1] > 0, "warmup, then constant, then the linear cooldown"
    make(tmp_path / "resumed", [StopAt(3)]).train()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    losses = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    assert all(abs(losses(straight)[s] - losses(resumed)[s]) < 1e-6 for s in range(4, 9))
    weights = lambda t: {n: p.detach() for n, p in t.model.named_parameters()}  # noqa: E731
    assert max_diff(weights(straight), weights(resumed)) < 1e-6
    assert max_diff(weights(straight), dict(tiny_model().named_parameters())) > 1e-2


def test_evaluation_loss_is_per_predicted_token_over_the_whole_set(tmp_path):
    """Rows of 12, 5, 9 and 3 tokens in batches of 2: eval_loss is sum(CE) / sum(tokens predicted), not a mean of
    the batch means."""
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=2)
    with torch.no_grad():
        expected, _ = direct_loss(trainer.model.eval(), [row["input_ids"] for row in rows_dataset()])
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_muon_groups_and_orthogonalisation():
    model = tiny_model()
    args = make_trainer("/tmp/unused", "muon").args
    groups = muon_param_groups(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    adam, *muon = groups
    assert {names[id(p)].split(".")[-2] for p in adam["params"]} >= {"embed_tokens", "lm_head"}
    assert any(names[id(p)] == "model.scalars" for p in adam["params"])
    fused = [g for g in muon if g["split"] == 3]
    assert fused and all(names[id(p)].endswith("qkv_proj.weight") for p in fused[0]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    matrix = torch.randn(3, 48, 32, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(matrix).float())
    assert singular.min() > 0.5 and singular.max() < 1.3, "Newton-Schulz pushes singular values towards 1"
    weights = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(8, 4)),
               torch.nn.Parameter(torch.randn(4, 6))]
    start = [w.detach().clone() for w in weights]
    for w in weights:
        w.grad = torch.randn_like(w)
    MuonWithAdamW([dict(params=weights, use_muon=True, lr=0.1, momentum=0.9)]).step()
    for w, before in zip(weights, start):  # first step: buffer = 0.1 g, Nesterov direction = g.lerp(buffer, 0.9)
        direction = w.grad.lerp(0.1 * w.grad, 0.9)
        scale = max(1, w.shape[0] / w.shape[1]) ** 0.5
        torch.testing.assert_close(w.detach(), before - 0.1 * scale * orthogonalize(direction), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        MuonWithAdamW([dict(params=[torch.nn.Parameter(torch.zeros(3))], use_muon=True, lr=0.1)])


def test_packing_starts_every_document_with_eot():
    tokenizer = tiny_tokenizer(40)
    rows = pack_documents(["w10 w11 w12", "w13 w14", "w15 w16 w17 w18"], tokenizer, 4, eot_token_id=3)
    stream = [token for row in rows["input_ids"] for token in row]
    assert stream == [3, 10, 11, 12, 3, 13, 14, 3, 15, 16, 17, 18]
    with pytest.raises(ValueError, match="fewer than one row"):
        pack_documents(["w10"], tokenizer, 8, eot_token_id=3)


def test_run_script_requires_the_architecture_and_matching_tokenizer(tmp_path):
    model_args, _, training_args = run_modded_gpt.parse(["--output_dir", str(tmp_path)])
    tokenizer = tiny_tokenizer(200)
    model_args.config_overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    with pytest.raises(ValueError, match=r"must state \['head_dim'\]"):
        run_modded_gpt.build_model(model_args, training_args, tokenizer, 16)
    model_args.config_overrides["vocab_size"] = 256
    with pytest.raises(ValueError, match="may not set"):
        run_modded_gpt.build_model(model_args, training_args, tokenizer, 16)
    del model_args.config_overrides["vocab_size"]
    model_args.config_overrides["head_dim"] = 16
    model = run_modded_gpt.build_model(model_args, training_args, tokenizer, 16)
    config = model.config
    assert (config.vocab_size, config.tokenizer_vocab_size, config.eot_token_id) == (256, 200, tokenizer.sep_token_id)
    assert tokenizer.eos_token_id == tokenizer.sep_token_id, "[SEP] becomes the EOS the export and generate use"
    model.save_pretrained(tmp_path / "model")
    training_args.init_from = str(tmp_path / "model")
    model_args.config_overrides = {}
    with pytest.raises(ValueError, match="pass its tokenizer"):
        run_modded_gpt.build_model(model_args, training_args, tiny_tokenizer(300), 16)
    assert run_modded_gpt.build_model(model_args, training_args, tokenizer, 16).config.tokenizer_vocab_size == 200
