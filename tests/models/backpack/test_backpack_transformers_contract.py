"""The transformers contract of the Backpack classes beyond transformers' common tests (issue 15): transformers'
gradient checkpointing with `every_n_layers`, the causal-LM loss kwargs (`shift_labels`, `ignore_index`,
`num_items_in_batch`) against a hand computation, generation fields of the config, torch.export / torch.compile,
the attention interface, `inputs_embeds` (and PEFT's CAUSAL_LM wrapper, which passes it), and generation on
transformers 4.57 and 5."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from modeling.backpack import BackpackConfig, BackpackForCausalLM, BackpackModel

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
VARIANTS = {"stanford": {}, "nano": dict(use_bias=False, sense_weight_bias=False, scale_sense_weights=False,
                                         scale_attn_by_inverse_layer_idx=False)}


def build(model_class=BackpackForCausalLM, variant="stanford", **overrides):
    torch.manual_seed(0)
    config = dict(vocab_size=64, pad_token_id=0, hidden_size=32, num_senses=4, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=48, sense_intermediate_size=40, max_position_embeddings=24,
                  sense_network=variant, dropout=0.0, **VARIANTS[variant])
    return model_class(BackpackConfig(**{**config, **overrides})).eval()


def ids(*shape, seed=0):
    return torch.randint(1, 64, shape, generator=torch.Generator().manual_seed(seed))


def padded_batch():
    tokens = ids(2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    return tokens, mask


def main_output(outputs):
    return outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state


# ---- point 2: gradient checkpointing the transformers way ----

def test_gradient_checkpointing_honours_every_n_layers_and_keeps_the_gradients():
    model = build(num_hidden_layers=4).train()
    tokens, mask = padded_batch()
    reference = build(num_hidden_layers=4).train()
    reference(tokens, attention_mask=mask, labels=tokens).loss.backward()

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2)
    blocks = model.backpack.layers
    assert [block.gradient_checkpointing for block in blocks] == [True, False, True, False]
    calls = [0] * len(blocks)
    for index, block in enumerate(blocks):
        def counting(function, *args, _index=index, _checkpoint=block._gradient_checkpointing_func, **kwargs):
            calls[_index] += 1
            return _checkpoint(function, *args, **kwargs)
        block._gradient_checkpointing_func = counting
    model(tokens, attention_mask=mask, labels=tokens).loss.backward()
    assert calls == [1, 0, 1, 0], "only every second block recomputes its activations"
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter.grad, expected.grad, msg=name)

    model.gradient_checkpointing_disable()
    assert not any(block.gradient_checkpointing for block in blocks)


def test_gradient_checkpointing_layer_checkpoints_on_transformers_4_57():
    """4.57 has GradientCheckpointingLayer too (without `every_n_layers`): every block is checkpointed, same grads."""
    from tests.compat_env import compat_python

    code = (
        "import torch\n"
        "from transformers.modeling_layers import GradientCheckpointingLayer\n"
        "from modeling.backpack import BackpackConfig, BackpackForCausalLM\n"
        "from modeling.backpack.modeling_backpack import BackpackBlock\n"
        "assert issubclass(BackpackBlock, GradientCheckpointingLayer)\n"
        "config = BackpackConfig(vocab_size=64, hidden_size=32, num_senses=4, num_hidden_layers=2,\n"
        "                        num_attention_heads=4, max_position_embeddings=24, dropout=0.0)\n"
        "tokens = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(0))\n"
        "grads, calls = [], []\n"
        "for checkpointing in (False, True):\n"
        "    torch.manual_seed(0)\n"
        "    model = BackpackForCausalLM(config).train()\n"
        "    if checkpointing:\n"
        "        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})\n"
        "        for block in model.backpack.layers:\n"
        "            def counting(f, *a, _original=block._gradient_checkpointing_func, **k):\n"
        "                calls.append(1)\n"
        "                return _original(f, *a, **k)\n"
        "            block._gradient_checkpointing_func = counting\n"
        "    model(tokens, labels=tokens).loss.backward()\n"
        "    grads.append([p.grad.clone() for p in model.parameters()])\n"
        "assert len(calls) == 2, calls\n"
        "assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))\n"
        "import transformers; print(transformers.__version__)\n"
    )
    result = subprocess.run([str(compat_python("4.57.6")), "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "4.57.6"


# ---- point 3: the causal-LM loss contract ----

def hand_loss(logits, targets, ignore_index):
    """-log p(target) averaged over the kept positions, written out (log-sum-exp by hand)."""
    terms = []
    for row in range(targets.shape[0]):
        for position in range(targets.shape[1]):
            target = int(targets[row, position])
            if target == ignore_index:
                continue
            scores = logits[row, position].double()
            terms.append(torch.log(torch.exp(scores - scores.max()).sum()) + scores.max() - scores[target])
    return torch.stack(terms).sum(), len(terms)


def test_shift_labels_are_the_targets_and_loss_kwargs_are_honoured():
    model = build()
    tokens, mask = padded_batch()
    shifted = ids(2, 7, seed=3)
    shifted[0, 2], shifted[1, :4] = -1, -1  # ignored under ignore_index=-1
    garbage = torch.full_like(tokens, 5)
    out = model(tokens, attention_mask=mask, labels=garbage, shift_labels=shifted, ignore_index=-1)
    total, count = hand_loss(out.logits.detach(), shifted, ignore_index=-1)
    torch.testing.assert_close(out.loss, (total / count).float())
    assert torch.equal(model(tokens, attention_mask=mask, shift_labels=shifted, ignore_index=-1).loss, out.loss)
    summed = model(tokens, attention_mask=mask, shift_labels=shifted, ignore_index=-1, num_items_in_batch=4).loss
    torch.testing.assert_close(summed, (total / 4).float())
    # labels alone are shifted once: position t predicts labels[t + 1], and -100 stays the default ignore_index
    labels = tokens.masked_fill(mask == 0, -100)
    total, count = hand_loss(out.logits.detach()[:, :-1], labels[:, 1:], ignore_index=-100)
    torch.testing.assert_close(model(tokens, attention_mask=mask, labels=labels).loss, (total / count).float())
    with pytest.raises(ValueError, match="shift_labels shape"):
        model(tokens, shift_labels=shifted[:, :-1])
    with pytest.raises(ValueError, match="not ignore_index"):
        model(tokens, shift_labels=shifted)  # -1 is an id outside the vocabulary unless it is the ignore_index


# ---- point 4: generation fields of the config ----

def test_generation_fields_are_config_fields_and_old_exports_get_the_defaults(tmp_path):
    config = BackpackConfig()
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.use_cache) == (None, None, None, True)
    set_config = BackpackConfig(vocab_size=64, bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0, use_cache=False)
    set_config.save_pretrained(tmp_path / "set")
    again = BackpackConfig.from_pretrained(tmp_path / "set")
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id, again.use_cache) == (1, [2, 3], 0, False)
    # a config.json written before these were fields (as hubzoo exports are) lacks them
    (tmp_path / "old").mkdir()
    fields = BackpackConfig(vocab_size=64).to_dict()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache"):
        fields.pop(key, None)
    (tmp_path / "old" / "config.json").write_text(json.dumps(fields))
    old = BackpackConfig.from_pretrained(tmp_path / "old")
    assert (old.bos_token_id, old.eos_token_id, old.pad_token_id, old.use_cache) == (None, None, None, True)
    with pytest.raises(ValueError, match="eos_token_id"):
        BackpackConfig(vocab_size=64, eos_token_id=64)
    model = build(use_cache=False)
    assert model(ids(1, 5)).cache is None, "config.use_cache=False: no cache unless asked"
    assert model(ids(1, 5), use_cache=True).cache.get_seq_length() == 5


# ---- point 7: traceable ----

@pytest.mark.parametrize("model_class", [BackpackModel, BackpackForCausalLM])
def test_export_and_compile_give_eager_outputs_and_leave_eager_intact(model_class):
    model = build(model_class)
    tokens, mask = padded_batch()
    kwargs = dict(attention_mask=mask, use_cache=False)
    eager = main_output(model(tokens, **kwargs))
    exported = torch.export.export(model, (tokens,), kwargs=kwargs)
    torch.testing.assert_close(main_output(exported.module()(tokens, **kwargs)), eager)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # the capture is under test, not codegen
    torch.testing.assert_close(main_output(compiled(tokens, **kwargs)), eager)
    after = main_output(model(tokens, **kwargs))
    assert type(after) is torch.Tensor, "a traced tensor leaked into eager mode"
    assert torch.equal(after, eager)
    with pytest.raises(ValueError, match="outside"):  # eager keeps its value checks after tracing
        model(torch.full((1, 3), 64))


# ---- point 8: attention interface and inputs_embeds ----

def test_attention_implementations_agree_and_eager_returns_the_probabilities():
    model = build()
    tokens, mask = padded_batch()
    logits = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        with torch.no_grad():  # flex_attention has no backward on CPU
            logits[implementation] = (model(tokens, attention_mask=mask).logits, model(tokens).logits)
    for implementation in ("sdpa", "flex_attention"):
        for got, expected in zip(logits[implementation], logits["eager"]):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    model.set_attn_implementation("eager")
    out = model(tokens, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    # block 0 by hand: softmax of q·k / (sqrt(head_dim) * (layer + 1)) over the real, earlier positions
    attn = model.backpack.layers[0].attn
    q, k, _ = attn.qkv_proj(model.backpack.layers[0].attn_norm(out.hidden_states[0])).split(32, dim=-1)
    q, k = (t.view(2, 7, 4, 8).transpose(1, 2) for t in (q, k))
    scores = q @ k.transpose(-1, -2) / (8 ** 0.5 * 1)
    visible = torch.ones(7, 7).tril().bool()[None, None] & mask.bool()[:, None, None, :]
    visible = visible | torch.eye(7, dtype=torch.bool)
    expected = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    torch.testing.assert_close(out.attentions[0], expected, atol=1e-6, rtol=1e-5)
    # sdpa has no probabilities: the call is computed eagerly, same numbers
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(model(tokens, attention_mask=mask, output_attentions=True).attentions[0], expected,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_embeds_feed_senses_and_contextualizer(variant):
    model = build(variant=variant)
    tokens, mask = padded_batch()
    embeds = model.get_input_embeddings()(tokens).detach().requires_grad_()
    by_ids = model(tokens, attention_mask=mask)
    by_embeds = model(inputs_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits)
    torch.testing.assert_close(by_embeds.senses, by_ids.senses)
    by_embeds.logits.sum().backward()
    assert embeds.grad.abs().sum() > 0
    generated = model.generate(inputs_embeds=embeds.detach(), attention_mask=mask, max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
    from_ids = model.generate(tokens, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[:, -4:], from_ids[:, -4:])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(tokens, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="hidden_size"):
        model(inputs_embeds=embeds[..., :8])


def test_peft_causal_lm_wrapper_trains_a_lora_through_inputs_embeds():
    peft = pytest.importorskip("peft")
    model = build().train()
    tokens, mask = padded_batch()
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", r=4,
                                                       init_lora_weights=False))
    labels = tokens.masked_fill(mask == 0, -100)
    for inputs in (dict(input_ids=tokens), dict(inputs_embeds=lora.get_input_embeddings()(tokens))):
        lora.zero_grad()
        loss = lora(**inputs, attention_mask=mask, labels=labels).loss
        loss.backward()
        trained = {name: p.grad for name, p in lora.named_parameters() if p.requires_grad}
        assert trained and all("lora_" in name for name in trained)
        assert all(grad is not None and grad.abs().sum() > 0 for grad in trained.values())
    generated = lora.eval().generate(input_ids=tokens, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, 10)


# ---- point 9: generation on both transformers lines ----

@pytest.fixture(scope="module")
def exported_backpack(tmp_path_factory):
    from hub_exports.exporting import export
    from tests.modeling_common import tiny_tokenizer

    return export(build(), tiny_tokenizer(64), tmp_path_factory.mktemp("export") / "backpack-tiny", run_verify=False)


def run_generation_driver(python, folder, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([str(python), "-m", "tests.models.backpack.generation_driver", str(folder)],
                            cwd=tmp_path, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_generate_and_pipeline_work_on_transformers_4_57_and_5(exported_backpack, tmp_path):
    from tests.compat_env import compat_python

    results = [run_generation_driver(python, exported_backpack, tmp_path)
               for python in (compat_python("4.57.6"), sys.executable)]
    assert results[0]["version"] == "4.57.6" and results[1]["version"].startswith("5.")
    for result in results:
        for mode in ("greedy", "sample", "beam"):
            cached, uncached = result[mode]
            assert cached == uncached, f"{result['version']} {mode}: the cache changed the tokens"
            assert len(cached[0]) == 4 + 5
        assert result["pipeline"][:3] == [5, 6, 7] and len(result["pipeline"]) == 6, result["pipeline"]
        assert "cache_implementation='static'" in result["static"], result["static"]
    for mode in ("greedy", "beam", "pipeline"):  # the two lines agree token for token
        assert results[0][mode] == results[1][mode], mode


def test_static_cache_is_refused_before_any_work():
    model = build()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="cache_implementation='static'"):
        model.generate(ids(1, 4), max_new_tokens=3, do_sample=False, cache_implementation="static")
    assert not calls, "refused before the first forward"
    with pytest.raises(ValueError, match="DynamicCache"):  # a static cache handed to forward directly
        from transformers import StaticCache
        model(ids(1, 4), cache=StaticCache(config=model.config, max_cache_len=8))
