"""MDLM and BD3-LM as transformers models (issue 15): gradient checkpointing through GradientCheckpointingLayer with
`every_n_layers`, hidden states on the autograd graph, the attention interface (eager / sdpa / flex_attention,
`output_attentions`), `inputs_embeds`, and torch.export / torch.compile of all four classes, including the lru_cache
tables that must never keep a traced tensor."""

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM, Bd3lmModel
from modeling.bd3lm import modeling_bd3lm
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM, MdlmModel
from modeling.mdlm import modeling_mdlm

MASK = 39
SIZES = dict(vocab_size=40, mask_token_id=MASK, pad_token_id=0, bos_token_id=1, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16, dropout=0.0,
             zero_init_modulation=False)
CLASSES = [MdlmModel, MdlmForMaskedDiffusionLM, Bd3lmModel, Bd3lmForMaskedDiffusionLM]
REPO = Path(__file__).resolve().parents[2]
# (class, training pass): BD3-LM has a training pass (clean_ids) and a generation pass, MDLM one pass
PASSES = [(MdlmModel, True), (MdlmForMaskedDiffusionLM, True), (Bd3lmModel, True), (Bd3lmModel, False),
          (Bd3lmForMaskedDiffusionLM, True), (Bd3lmForMaskedDiffusionLM, False)]


def pass_id(case):
    return f"{case[0].__name__}-{'training' if case[1] else 'generation'}_pass"


def build(model_class, attn_implementation=None, **overrides):
    config_class = MdlmConfig if model_class.__name__.startswith("Mdlm") else Bd3lmConfig
    extra = {} if config_class is MdlmConfig else {"block_size": 4}
    torch.manual_seed(0)
    config = config_class(**{**SIZES, **extra, **overrides})
    return model_class._from_config(config, attn_implementation=attn_implementation).eval()


def is_bd3lm(model_class):
    return model_class.__name__.startswith("Bd3lm")


def batch(model_class, training_pass=True, length=8):
    """x_t with about 40% masked, x_0, one t per sequence, a padded tail in the second row. For BD3-LM the training
    pass (clean_ids) unless `training_pass` is False; heads get labels in the training pass."""
    generator = torch.Generator().manual_seed(3)
    clean = torch.randint(5, MASK, (2, length), generator=generator)
    noisy = clean.masked_fill(torch.rand(2, length, generator=generator) < 0.4, MASK)
    attention = torch.ones_like(clean)
    attention[1, -2:] = 0
    inputs = {"input_ids": noisy, "attention_mask": attention, "timesteps": torch.tensor([0.3, 0.8])}
    if is_bd3lm(model_class) and training_pass:
        inputs["clean_ids"] = clean
    if model_class.__name__.endswith("LM") and training_pass:
        inputs["labels"] = clean.masked_fill(attention == 0, -100)
    return inputs


def trunk(model):
    return getattr(model, "mdlm", None) or getattr(model, "bd3lm", None) or model


# ---- point 2: gradient checkpointing the transformers way ----
@pytest.mark.parametrize("model_class", CLASSES[1::2], ids=lambda c: c.__name__)
def test_every_n_layers_checkpoints_only_those_blocks(model_class):
    """With `every_n_layers=2` over 4 blocks, blocks 0 and 2 run their forward again in the backward pass (the
    recompute of a checkpoint) and blocks 1 and 3 do not; the gradients equal those without checkpointing."""
    model = build(model_class, num_hidden_layers=4).train()
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in trunk(model).layers)
    inputs = batch(model_class)

    def step():
        calls = [0] * 4
        hooks = [layer.qkv_proj.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
                 for i, layer in enumerate(trunk(model).layers)]
        model.zero_grad()
        model(**inputs).loss.backward()
        for hook in hooks:
            hook.remove()
        return calls, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_calls, plain_grads = step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.x: deprecated alias of activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2)
    calls, grads = step()
    assert plain_calls == [1, 1, 1, 1]
    assert calls == [2, 1, 2, 1], calls
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], msg=name)
    model.activation_checkpointing_disable()
    assert step()[0] == [1, 1, 1, 1]


@pytest.mark.slow
def test_checkpointing_and_attention_behave_the_same_on_transformers_4_57():
    """The driver (checkpointing recompute counts and gradients, eager = sdpa, output_attentions) gives the same
    answers under transformers 4.57 as under the installed release."""
    from tests.compat_env import compat_python

    def run(python):
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([str(python), "-m", "tests.models.diffusion_compat_driver"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    here, old = run(sys.executable), run(compat_python("4.57.6"))
    assert old.pop("transformers").startswith("4.57") and not here.pop("transformers").startswith("4.")
    assert old == here
    for name, result in here.items():
        assert result["recomputed"] == [2, 2] and result["grads_equal"] and result["eager_equals_sdpa"], name
        assert result["attention_rows_sum_to_one"], name


# ---- point 6: hidden states are the tensors on the autograd graph ----
@pytest.mark.parametrize("case", PASSES, ids=pass_id)
def test_hidden_states_receive_gradients(case):
    model_class, training_pass = case
    model = build(model_class).train()
    inputs = batch(model_class, training_pass)
    outputs = model(**inputs, output_hidden_states=True)
    assert len(outputs.hidden_states) == model.config.num_hidden_layers + 1
    for hidden in outputs.hidden_states:
        hidden.retain_grad()
    outputs[0].float().pow(2).mean().backward()
    for index, hidden in enumerate(outputs.hidden_states):
        assert hidden.grad is not None and hidden.grad.abs().sum() > 0, f"hidden_states[{index}] is off the graph"
    ids = inputs["input_ids"]
    if "clean_ids" in inputs:  # BD3-LM's training pass: the blocks see x_t (+) x_0
        ids = torch.cat((ids, inputs["clean_ids"]), dim=1)
    torch.testing.assert_close(outputs.hidden_states[0], model.get_input_embeddings()(ids))


# ---- point 8: the attention interface ----
def block_mask_by_hand(length, block_size, training_pass):
    """Which key each query may attend to, from the paper's definition, one pair at a time."""
    if not training_pass:
        return torch.tensor([[k // block_size <= q // block_size for k in range(length)] for q in range(length)])
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_clean, k_clean = q >= length, k >= length
            q_block, k_block = (q % length) // block_size, (k % length) // block_size
            if q_clean == k_clean and q_block == k_block:  # within a block of the same half
                allowed[q, k] = True
            elif not q_clean and k_clean and k_block < q_block:  # x_t sees earlier clean blocks
                allowed[q, k] = True
            elif q_clean and k_clean and k_block <= q_block:  # x_0 is block-causal
                allowed[q, k] = True
    return allowed


@pytest.mark.parametrize("case", PASSES, ids=pass_id)
def test_eager_attention_returns_probabilities_over_the_allowed_keys(case):
    model_class, training_pass = case
    model = build(model_class, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    inputs = batch(model_class, training_pass)
    with torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions
    length = inputs["input_ids"].shape[1]
    if is_bd3lm(model_class):
        allowed = block_mask_by_hand(length, 4, "clean_ids" in inputs)
    else:
        allowed = torch.ones(length, length, dtype=torch.bool)
    keys_real = inputs["attention_mask"].bool().repeat(1, allowed.shape[1] // length)
    allowed = allowed[None, None] & keys_real[:, None, None, :]
    assert len(attentions) == model.config.num_hidden_layers
    for probs in attentions:
        assert probs.shape == (2, 4, allowed.shape[-2], allowed.shape[-1])
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert (probs[~allowed.expand_as(probs)] == 0).all(), "a key outside the mask got attention"
        assert (probs[allowed.expand_as(probs)] > 0).all()


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda c: c.__name__)
def test_eager_and_sdpa_agree(model_class):
    inputs = batch(model_class)
    eager, sdpa = build(model_class, attn_implementation="eager"), build(model_class, attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs)[0], sdpa(**inputs)[0], atol=1e-5, rtol=1e-5)
    sdpa.set_attn_implementation("eager")  # switched at run time: every block reads the shared config
    with torch.no_grad():
        assert sdpa(**inputs, output_attentions=True).attentions[0] is not None


@pytest.mark.slow
@pytest.mark.parametrize("model_class", CLASSES[1::2], ids=lambda c: c.__name__)
def test_flex_attention_agrees_with_sdpa(model_class):
    """flex_attention carries the same boolean mask (padding; BD3-LM's block-diffusion mask). On CPU flex has no
    backward, so this is an inference pass."""
    inputs = batch(model_class)
    flex, sdpa = build(model_class, attn_implementation="flex_attention"), build(model_class)
    assert flex.config._attn_implementation == "flex_attention"
    with torch.no_grad():
        torch.testing.assert_close(flex(**inputs).logits, sdpa(**inputs).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda c: c.__name__)
def test_inputs_embeds_replace_input_ids(model_class):
    model = build(model_class)
    inputs = batch(model_class, training_pass=False)
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        by_ids = model(input_ids=ids, **inputs)[0]
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), **inputs)[0]
    torch.testing.assert_close(by_embeds, by_ids)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(input_ids=ids, inputs_embeds=model.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=torch.zeros(2, 8, 7))


def test_inputs_embeds_are_refused_where_the_ids_are_needed():
    """The NELBO reads which x_t positions hold the mask; BD3-LM's training pass embeds x_t and x_0 together."""
    for model_class in CLASSES[1::2]:
        model, inputs = build(model_class), batch(model_class)
        inputs.pop("clean_ids", None)
        embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
        with pytest.raises(ValueError, match="labels need input_ids"):
            model(inputs_embeds=embeds, **inputs)
    model, inputs = build(Bd3lmModel), batch(Bd3lmModel)
    with pytest.raises(ValueError, match="training pass .* takes input_ids, not inputs_embeds"):
        model(inputs_embeds=model.get_input_embeddings()(inputs.pop("input_ids")), **inputs)


# ---- point 7: torch.export and torch.compile ----
def clear_tensor_caches():
    """Empty the modules' lru_caches of tensor tables (rotary tables, BD3-LM's block mask)."""
    for module in (modeling_mdlm, modeling_bd3lm):
        for value in vars(module).values():
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()


def assert_real_and_equal(got, expected):
    for name in ("loss", "logits", "last_hidden_state"):
        if name in expected and expected[name] is not None:
            assert type(got[name]) is torch.Tensor and not isinstance(got[name], FakeTensor), name
            torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda c: c.__name__)
def test_torch_export_gives_the_eager_outputs_and_leaves_no_fake_tensor_cached(model_class):
    """A time-conditioned model (so `timesteps` reach the graph), exported with fresh caches: the exported program
    gives the eager outputs, and a later eager forward still returns real tensors equal to a fresh eager forward."""
    model = build(model_class, time_conditioning=True)
    inputs = batch(model_class)
    clear_tensor_caches()
    exported = torch.export.export(model, (), inputs)
    after_export = model(**inputs)
    clear_tensor_caches()
    expected = model(**inputs)
    assert_real_and_equal(after_export, expected)
    assert_real_and_equal(exported.module()(**inputs), expected)
    other_t = {**inputs, "timesteps": torch.tensor([0.6, 0.1])}  # t is an input of the graph, not a constant
    assert_real_and_equal(exported.module()(**other_t), model(**other_t))


@pytest.mark.slow
@pytest.mark.parametrize("model_class", CLASSES, ids=lambda c: c.__name__)
def test_torch_compile_fullgraph_gives_the_eager_outputs(model_class):
    model = build(model_class, time_conditioning=True)
    inputs = batch(model_class)
    clear_tensor_caches()
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(**inputs)
    after_compile = model(**inputs)
    clear_tensor_caches()
    expected = model(**inputs)
    assert_real_and_equal(after_compile, expected)
    assert_real_and_equal(got, expected)


def test_eager_value_checks_still_run_after_tracing():
    """Skipping the host-side checks is for tracing only: in eager mode ids outside the vocabulary are refused."""
    model = build(MdlmForMaskedDiffusionLM)
    torch.export.export(model, (), {"input_ids": torch.tensor([[5, 6, 7, 8]])})
    with pytest.raises(ValueError, match="outside"):
        model(input_ids=torch.tensor([[5, 6, 7, 40]]))
