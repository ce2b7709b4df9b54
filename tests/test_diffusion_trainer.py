"""MaskedDiffusionTrainer: the noise it draws, the normalisation of its NELBO (padding, gradient accumulation, two
processes), EMA, exact resume, the collator's checks, and the run script's config validation."""

import re
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from modeling.mdlm import masked_diffusion_nelbo
from tests.diffusion_trainer_driver import MASK_ID, PAD_ID, REAL_PER_ROW, VOCAB, one_step, rows_dataset, tiny_model
from tests.test_mlm_trainer import launch_two_processes, max_diff
from trainers.collators import DiffusionCollator
from modeling.diffusion import stratified_uniforms
from trainers.diffusion_trainer import MaskedDiffusionTrainer

DRIVER = Path(__file__).with_name("diffusion_trainer_driver.py")


def make_trainer(tmp_path, algorithm="mdlm", **args):
    defaults = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                    report_to="none", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=0)
    return MaskedDiffusionTrainer(model=tiny_model(algorithm), args=TrainingArguments(**{**defaults, **args}),
                                  train_dataset=rows_dataset(), eval_dataset=rows_dataset(),
                                  data_collator=DiffusionCollator(PAD_ID, MASK_ID, VOCAB))


def test_antithetic_times_cover_the_interval():
    """n stratified draws put exactly one value in each [i/n, (i+1)/n); MDLM maps them onto [eps, 1)."""
    values = stratified_uniforms((64,), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal((values * 64).floor().long(), torch.arange(64))
    blocks = stratified_uniforms((4, 8), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal((blocks.flatten() * 32).floor().long(), torch.arange(32))


def test_mdlm_noise(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    clean = torch.randint(1, MASK_ID, (256, 12), generator=torch.Generator().manual_seed(0))
    noisy, t = trainer.draw_noise(model, clean, torch.Generator().manual_seed(1), training=True)
    eps = model.config.sampling_eps
    assert t.shape == (256,) and t.min() >= eps and t.max() < 1 and t.min() < eps + 1 / 256 and t.max() > 1 - 1 / 256
    masked = noisy == MASK_ID
    assert torch.equal(noisy[~masked], clean[~masked])
    rate = masked.float().mean(1)  # each row's masking rate follows its move chance (1 - eps) t
    assert (rate - (1 - eps) * t).abs().mean() < 0.15 and torch.corrcoef(torch.stack((rate, t)))[0, 1] > 0.9


def test_bd3lm_noise_uses_the_buffers_in_training_and_the_full_interval_in_evaluation(tmp_path):
    trainer = make_trainer(tmp_path, "bd3lm")
    model = trainer.model
    model.set_sampling_interval(0.3, 0.8)
    clean = torch.randint(1, MASK_ID, (64, 16), generator=torch.Generator().manual_seed(0))
    noisy, t = trainer.draw_noise(model, clean, torch.Generator().manual_seed(1), training=True)
    assert t.shape == (64, 16) and t.min() >= 0.3 and t.max() <= 0.8
    assert torch.equal(t, t[:, ::4].repeat_interleave(4, dim=1)), "one t per block of 4"
    assert not (noisy[:, 0] == MASK_ID).any(), "ignore_bos: the first token is never masked"
    _, t_eval = trainer.draw_noise(model, clean, torch.Generator().manual_seed(1), training=False)
    assert t_eval.min() < 0.05 and t_eval.max() > 0.95


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_loss_is_the_nelbo_per_real_token(tmp_path, algorithm):
    """compute_loss equals the NELBO sum over the batch's masked tokens / its real tokens, computed here directly
    from the same noise (padding invariance itself: tests/models/test_diffusion_behaviour.py)."""
    trainer = make_trainer(tmp_path, algorithm)
    model = trainer.model.eval()
    batch = trainer.data_collator(list(rows_dataset()))
    assert "attention_mask" in batch and batch["labels"].ne(-100).sum() == sum(REAL_PER_ROW)
    trainer._eval_batch = 5
    loss = trainer.compute_loss(model, batch)
    noisy, t = trainer.draw_noise(model, batch["input_ids"], trainer._generator("eval", 5), training=False)
    extra = {"clean_ids": batch["input_ids"]} if algorithm == "bd3lm" else {}
    logits = model(input_ids=noisy, attention_mask=batch["attention_mask"], timesteps=t, **extra).logits
    labels = batch["labels"].clone()
    if algorithm == "bd3lm":
        labels[:, 0] = -100  # evaluation does not score BOS
    weights = model.noise_schedule(t)[1]
    expected = masked_diffusion_nelbo(logits, noisy, labels, weights if weights.dim() == 2 else weights[:, None],
                                      MASK_ID).sum() / labels.ne(-100).sum()
    torch.testing.assert_close(loss, expected)
    # Rows collated alone (no padding at all) give finite losses too
    per_row = [trainer.compute_loss(model, trainer.data_collator([row])) for row in rows_dataset()]
    assert all(torch.isfinite(value) for value in per_row)


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_gradient_accumulation_is_exact(tmp_path, algorithm):
    """bs 4 x GA 1 = bs 2 x GA 2 = bs 1 x GA 4 after one SGD step: the loss is normalised by the step's real tokens,
    not per micro-batch (the rows have 12, 5, 9 and 3 real tokens)."""
    _, reference = one_step(tmp_path / "a", algorithm, batch_size=4)
    for batch_size, ga in ((2, 2), (1, 4)):
        _, params = one_step(tmp_path / f"b{batch_size}", algorithm, batch_size=batch_size, ga=ga)
        assert max_diff(reference, params) < 1e-5, (batch_size, ga)
    untouched = tiny_model(algorithm)
    assert max_diff(reference, dict(untouched.named_parameters())) > 1e-3, "the step must move the weights"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_two_processes_match_one(tmp_path, algorithm):
    from safetensors.torch import load_file

    out = launch_two_processes(DRIVER, tmp_path, tmp_path / "two.safetensors", "--algorithm", algorithm,
                               "--batch-size", "2", "--world-size", "2")
    assert sorted(re.findall(r"rank=\d world_size=2", out.stdout)) == ["rank=0 world_size=2", "rank=1 world_size=2"]
    _, one = one_step(tmp_path / "one", algorithm, batch_size=4)
    assert max_diff(one, load_file(tmp_path / "two.safetensors")) < 1e-5


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_resume_is_exact_with_ema(tmp_path, algorithm):
    """Stop after step 3 (checkpoint with EMA), resume to step 6: losses, weights and the EMA equal the
    uninterrupted run's (AdamW, warmup schedule, the noise generator and the EMA all come back)."""
    def make(output_dir, extra=()):
        args = TrainingArguments(output_dir=str(output_dir), max_steps=6, save_strategy="steps", save_steps=3,
                                 logging_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, warmup_steps=2,
                                 lr_scheduler_type="constant_with_warmup", use_cpu=True, report_to="none",
                                 dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = MaskedDiffusionTrainer(model=tiny_model(algorithm), args=args, train_dataset=rows_dataset(),
                                         data_collator=DiffusionCollator(PAD_ID, MASK_ID, VOCAB),
                                         ema_decay=0.9, callbacks=list(extra))
        return trainer

    straight = make(tmp_path / "straight")
    straight.train()
    interrupted = make(tmp_path / "resumed", [StopAt(3)])
    interrupted.train()
    assert (tmp_path / "resumed" / "checkpoint-3" / "ema.safetensors").is_file()
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    losses = lambda t: {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}  # noqa: E731
    assert all(abs(losses(straight)[s] - losses(resumed)[s]) < 1e-6 for s in (4, 5, 6))
    weights = lambda t: {n: p.detach() for n, p in t.model.named_parameters()}  # noqa: E731
    assert max_diff(weights(straight), weights(resumed)) < 1e-6
    ema_a, ema_b = straight.ema_callback.ema, resumed.ema_callback.ema
    assert ema_a.num_updates == ema_b.num_updates == 6
    assert max(float((a - b).abs().max()) for a, b in zip(ema_a.shadow, ema_b.shadow)) < 1e-6
    assert max(float((a - p.detach()).abs().max()) for a, p in zip(ema_a.shadow, straight.model.parameters())) > 1e-4
    with straight.averaged_weights():  # evaluation and export see the average, the model gets its weights back
        assert all(torch.equal(p.detach(), s) for p, s in zip(straight.model.parameters(), ema_a.shadow))
    assert max_diff(weights(straight), weights(resumed)) < 1e-6


def test_resume_without_ema_file_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    (tmp_path / "checkpoint-2" / "ema.safetensors").unlink()
    resumed = make_trainer(tmp_path, max_steps=3, save_strategy="no")
    with pytest.raises(FileNotFoundError, match="EMA"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_collator_checks_ids_on_the_cpu():
    collator = DiffusionCollator(PAD_ID, MASK_ID, VOCAB)
    packed = collator([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    assert "attention_mask" not in packed and packed["labels"].ne(-100).all()
    with pytest.raises(ValueError, match="outside"):
        collator([{"input_ids": [1, VOCAB]}])
    with pytest.raises(ValueError, match="mask id"):
        collator([{"input_ids": [1, MASK_ID]}])


def test_run_script_requires_the_architecture(tmp_path):
    from trainers.diffusion_config import build_model
    from trainers.run_mdlm import parse

    config = tmp_path / "c.yaml"
    config.write_text("algorithm: bd3lm\nconfig_overrides: {hidden_size: 32, num_hidden_layers: 1, "
                      "num_attention_heads: 2, cond_dim: 8}\noutput_dir: out\n")
    model_args, data_args, training_args = parse([str(config)])
    from tests.modeling_common import tiny_tokenizer

    with pytest.raises(ValueError, match=r"\['block_size'\]"):
        build_model(model_args, training_args, tiny_tokenizer(50), 16)
    config.write_text("algorithm: mdlm\nconfig_overrides: {hidden_size: 32}\nvocab: 3\n")
    with pytest.raises(ValueError, match="Unknown keys.*vocab"):
        parse([str(config)])


def test_init_from_is_strict_about_the_sampling_buffers(tmp_path):
    """The post-mortem: a BD3-LM fine-tune started without its sampling_eps buffers. Here a checkpoint that lacks
    them does not load."""
    from safetensors.torch import load_file, save_file

    from tests.modeling_common import tiny_tokenizer
    from trainers.diffusion_config import build_model
    from trainers.run_mdlm import parse

    model = tiny_model("bd3lm")
    model.save_pretrained(tmp_path / "ckpt")
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    del state["sampling_eps_min"]
    save_file(state, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    config = tmp_path / "c.yaml"
    config.write_text(f"algorithm: bd3lm\ninit_from: {tmp_path / 'ckpt'}\noutput_dir: {tmp_path / 'out'}\n")
    model_args, _, training_args = parse([str(config)])
    with pytest.raises(ValueError, match="sampling_eps_min"):
        build_model(model_args, training_args, tiny_tokenizer(VOCAB), 16)


def test_init_from_overrides_are_validated_and_reach_the_buffers():
    from trainers.diffusion_config import apply_overrides

    model = tiny_model("bd3lm")  # max_position_embeddings 16
    with pytest.raises(ValueError, match="block_size"):
        apply_overrides(model, {"block_size": 3})
    apply_overrides(model, {"block_size": 2, "sampling_eps_min": 0.3, "sampling_eps_max": 0.8})
    assert model.config.block_size == 2 and model.sampling_interval == pytest.approx((0.3, 0.8))


def test_evaluation_loss_is_per_scored_token_over_the_whole_set(tmp_path):
    """Rows of 12, 5, 9 and 3 tokens in batches of 2: eval_loss is sum(NELBO) / sum(tokens), not a mean of the batch
    means, recomputed here batch by batch with the evaluation noise."""
    trainer = make_trainer(tmp_path, per_device_eval_batch_size=2)
    model, rows = trainer.model.eval(), list(rows_dataset())
    totals, counts = 0.0, 0
    for index, start in enumerate(range(0, 4, 2), start=1):
        batch = trainer.data_collator(rows[start:start + 2])
        noisy, t = trainer.draw_noise(model, batch["input_ids"], trainer._generator("eval", index), training=False)
        with torch.no_grad():
            logits = model(input_ids=noisy, attention_mask=batch.get("attention_mask"), timesteps=t).logits
        weights = model.noise_schedule(t)[1][:, None]
        totals += masked_diffusion_nelbo(logits, noisy, batch["labels"], weights, MASK_ID).sum().item()
        counts += batch["labels"].ne(-100).sum().item()
    assert counts == sum(REAL_PER_ROW)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(totals / counts, rel=1e-5)
