"""The modded GPT as a transformers model (issue 15): checkpointing every n blocks, the causal LM loss contract,
generation fields in the config, one cache layer per block, resizing, tracing, the attention interface, PEFT's task
wrappers, and generation on transformers 4.57 as on 5.x."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling.modded_gpt import (
    ModdedGptConfig,
    ModdedGptForCausalLM,
    ModdedGptForSequenceClassification,
    ModdedGptModel,
)
from tests.modeling_common import tiny_tokenizer
from tests.models.modded_gpt.test_modded_gpt_behaviour import EOT, build, ids
from tests.models.modded_gpt.test_modeling_modded_gpt import TINY

REPO_ROOT = Path(__file__).resolve().parents[3]


def documents_and_padding():
    """Two rows: a document boundary inside row 0, left padding in row 1 (so every mask rule is in play)."""
    tokens = ids(2, 20)
    tokens[0, 6] = EOT
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    return tokens, mask


# ---- point 2: gradient checkpointing ----

def counted(function, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)
    return wrapper


def test_gradient_checkpointing_every_n_layers_recomputes_only_those_blocks():
    tokens, mask = documents_and_padding()
    grads, mlp_calls = [], []
    for every_n in (None, 3):
        model = build().train()
        if every_n:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                                  every_n_layers=every_n)
            assert [block.gradient_checkpointing for block in model.model.layers] == [i % 3 == 0 for i in range(12)]
        calls = []
        for block in model.model.layers:  # counts the replays too (module hooks do not run in a replay)
            block.mlp.forward = counted(block.mlp.forward, calls)
        model(tokens, attention_mask=mask, labels=tokens).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
        mlp_calls.append(len(calls))
    # 12 blocks forward, then the backward replays blocks 0, 3, 6 and 9 once each.
    assert mlp_calls == [12, 16]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


# ---- point 3: the causal LM loss contract ----

def hand_loss(logits, targets, ignore_index):
    """-log softmax at each target, written out position by position; the mean over the labelled ones and the sum."""
    total, count = 0.0, 0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            target = int(targets[b, t])
            if target == ignore_index:
                continue
            row = logits[b, t].double()
            total -= float(row[target] - torch.log(torch.exp(row - row.max()).sum()) - row.max())
            count += 1
    return total / count, total


def test_causal_lm_loss_takes_shift_labels_ignore_index_and_num_items_in_batch():
    model = build()
    tokens, mask = documents_and_padding()
    labels = tokens.masked_fill(mask == 0, -1)
    logits = model(tokens, attention_mask=mask).logits
    # Position t predicts token t + 1; the last position has no target.
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -1)], dim=1)
    mean, total = hand_loss(logits, shifted, ignore_index=-1)
    with torch.no_grad():
        by_labels = model(tokens, attention_mask=mask, labels=labels, ignore_index=-1).loss
        by_shift = model(tokens, attention_mask=mask, shift_labels=shifted, ignore_index=-1).loss
        # Given shift_labels, labels are not read (transformers' rule): garbage labels change nothing.
        both = model(tokens, attention_mask=mask, labels=torch.zeros_like(labels), shift_labels=shifted,
                     ignore_index=-1).loss
        summed = model(tokens, attention_mask=mask, shift_labels=shifted, ignore_index=-1,
                       num_items_in_batch=torch.tensor(7)).loss
    assert by_labels.item() == pytest.approx(mean, rel=1e-5)
    assert by_shift.item() == pytest.approx(mean, rel=1e-5)
    assert both.item() == pytest.approx(mean, rel=1e-5)
    assert summed.item() == pytest.approx(total / 7, rel=1e-5)
    with pytest.raises(ValueError, match="shift_labels"):
        model(tokens, shift_labels=shifted[:, :5])


# ---- point 4: generation fields ----

def test_generation_fields_are_config_fields_with_the_eot_default(tmp_path):
    default = ModdedGptConfig()
    assert (default.bos_token_id, default.eos_token_id, default.pad_token_id, default.use_cache) == (
        50256, 50256, None, True)
    # An export written before the fields existed: its config.json has none of them.
    old = {k: v for k, v in ModdedGptConfig(**TINY).to_dict().items()
           if k not in ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = ModdedGptConfig.from_pretrained(tmp_path)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id, loaded.use_cache) == (EOT, EOT, None, True)
    with pytest.raises(ValueError, match="use_cache"):
        ModdedGptConfig(**{**TINY, "use_cache": "yes"})
    model = build(use_cache=False)
    assert model(ids(1, 4)).cache is None and model(ids(1, 4), use_cache=True).cache is not None


# ---- point 5: cache layout and resizing ----

def test_cache_has_one_layer_per_block_from_forward_and_generate_and_continues():
    model = build(max_position_embeddings=40)
    prompt = ids(2, 9)
    prompt[0, 4] = EOT
    cache = model(prompt, use_cache=True).cache
    lengths = [cache.layers[i].get_seq_length() for i in range(len(cache.layers))]
    assert lengths == [9] * 7 + [0] + [9] * 4  # block 7 has no attention: its layer is never filled
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    generated_cache = generated.get("cache", generated.get("past_key_values"))
    assert len(generated_cache.layers) == 12 and generated_cache.layers[7].get_seq_length() == 0
    # generate continuing from the forward's cache gives what it gives from the prompt alone.
    continued = model.generate(prompt, cache=model(prompt[:, :-1], use_cache=True).cache, max_new_tokens=5,
                               do_sample=False)
    assert torch.equal(continued, generated.sequences)


def test_resize_keeps_the_config_coherent_and_the_folder_reloads(tmp_path):
    model = build()
    before = model(ids(2, 6)).logits
    model.resize_token_embeddings(140)
    assert (model.config.vocab_size, model.config.tokenizer_vocab_size) == (140, 140)
    assert all(table.num_embeddings == 140 for table in model.model.value_embeddings)
    torch.testing.assert_close(model(ids(2, 6)).logits[..., :128], before)  # old rows untouched
    new_ids = torch.tensor([[3, 139, 130, 7]])  # ids the resize added are accepted
    expected = model(new_ids).logits
    model.save_pretrained(tmp_path)
    reloaded, info = ModdedGptForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    torch.testing.assert_close(reloaded.eval()(new_ids).logits, expected)
    # Padding to a multiple keeps the extra rows as padding: only the tokenizer's ids are accepted.
    model.resize_token_embeddings(100, pad_to_multiple_of=64)
    assert (model.config.vocab_size, model.config.tokenizer_vocab_size) == (128, 100)
    with pytest.raises(ValueError, match="outside"):
        model(torch.tensor([[100]]))
    with pytest.raises(ValueError, match="eot_token_id=89"):
        model.resize_token_embeddings(50)
    assert model.config.vocab_size == 128  # refused before any work


# ---- point 7: traceability ----

def test_export_and_compile_give_eager_outputs_and_cache_nothing_fake():
    tokens, mask = documents_and_padding()
    for model_class in (ModdedGptModel, ModdedGptForCausalLM, ModdedGptForSequenceClassification):
        model = build(model_class)
        kwargs = {"attention_mask": mask}
        if model_class is not ModdedGptForSequenceClassification:
            kwargs["use_cache"] = False
        eager = model(tokens, **kwargs)[0]
        exported = torch.export.export(model, (tokens,), kwargs=kwargs)
        torch.testing.assert_close(exported.module()(tokens, **kwargs)[0], eager)
        torch._dynamo.reset()
        # fullgraph=True fails on any graph break; the eager backend keeps the test off the C++ compiler.
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(tokens, **kwargs)[0], eager)
        after = model(tokens, **kwargs)[0]
        assert type(after) is torch.Tensor and not isinstance(after, torch._subclasses.FakeTensor)
        torch.testing.assert_close(after, eager, atol=0, rtol=0)
        # The eager checks are back: an out-of-range id is refused again.
        with pytest.raises(ValueError, match="outside"):
            model(tokens.clamp(max=TINY["tokenizer_vocab_size"]) + 1, **kwargs)


# ---- point 8: attention interface and inputs_embeds ----

@pytest.mark.parametrize("window", [None, 2])
def test_eager_and_sdpa_agree_and_eager_returns_the_probabilities(window):
    tokens, mask = documents_and_padding()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = build(sliding_window_num_blocks=window)
        model.set_attn_implementation(implementation)
        outputs[implementation] = model(tokens, attention_mask=mask, output_attentions=implementation == "eager")
    torch.testing.assert_close(outputs["sdpa"].logits, outputs["eager"].logits, atol=1e-5, rtol=1e-5)
    attentions = outputs["eager"].attentions
    assert len(attentions) == 12 and attentions[7] is None
    probabilities = attentions[0]
    assert probabilities.shape == (2, TINY["num_attention_heads"], 20, 20)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2, 2, 20))
    assert probabilities[0, :, 6:, :6].abs().max() == 0  # nothing attends across the EOT at position 6
    assert probabilities[1, :, 3:, :3].abs().max() == 0  # nor to padding
    assert probabilities.triu(1).abs().max() == 0  # nor to the future
    if window is not None:  # 4-token blocks, window 2 blocks (long) on block 0: key block >= query block - 1
        assert probabilities[0, :, 19, 7:12].abs().max() == 0 and probabilities[0, :, 19, 12:].min() > 0


def test_inputs_embeds_is_refused_with_the_reason_and_peft_wrappers_train():
    peft = pytest.importorskip("peft")
    tokens, mask = documents_and_padding()
    model = build()
    with pytest.raises(ValueError, match="value embeddings"):
        model(inputs_embeds=model.model.embed_tokens(tokens))
    for task_type, model_class, labels in (("CAUSAL_LM", ModdedGptForCausalLM, tokens),
                                           ("SEQ_CLS", ModdedGptForSequenceClassification, torch.tensor([0, 2]))):
        base = build(model_class).train()
        lora = peft.get_peft_model(base, peft.LoraConfig(task_type=task_type, r=4, target_modules=["qkv_proj",
                                                                                                  "o_proj"]))
        loss = lora(input_ids=tokens, attention_mask=mask, labels=labels).loss
        loss.backward()
        lora_grads = [p.grad for name, p in lora.named_parameters() if "lora_B" in name]
        assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


# ---- point 9: generation on transformers 4.57 and 5.x ----

def test_static_cache_is_refused_before_any_work():
    model = build()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="dynamic cache"):
        model.generate(ids(1, 4), cache_implementation="static", max_new_tokens=2)
    assert not calls


def test_generate_returns_the_raw_logits_and_never_picks_padding_rows():
    model = build()
    prompt = ids(2, 5)
    with torch.no_grad():
        model.lm_head.weight[TINY["tokenizer_vocab_size"]:] = 10 * model.lm_head.weight.abs().max()  # padding wins
        last = model(prompt).logits[:, -1]
    out = model.generate(prompt, max_new_tokens=1, do_sample=False, return_dict_in_generate=True, output_logits=True,
                         output_scores=True)
    torch.testing.assert_close(out.logits[0], last)  # the processor did not write into the raw logits
    assert torch.isinf(out.scores[0][:, TINY["tokenizer_vocab_size"]:]).all()
    assert int(out.sequences[:, -1].max()) < TINY["tokenizer_vocab_size"]


@pytest.fixture(scope="module")
def old_style_export(tmp_path_factory):
    from hub_exports import export

    model = build()
    folder = export(model, tiny_tokenizer(TINY["tokenizer_vocab_size"]), tmp_path_factory.mktemp("export") / "gpt",
                    run_verify=False)
    # As written before the generation fields were config fields.
    config = json.loads((folder / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "use_cache"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize("line", ["4.57.6", "installed"])
def test_generation_and_pipeline_on_both_transformers_lines(old_style_export, line, tmp_path):
    from tests.compat_env import compat_python

    python = str(compat_python(line)) if line != "installed" else sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([python, "-m", "tests.models.modded_gpt.generation_driver", str(old_style_export)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if line != "installed":
        assert seen["transformers"] == line
    assert seen["token_ids"] == [EOT, EOT, None, EOT] and seen["use_cache"] is True
    for mode in ("greedy", "beam", "sample"):
        assert seen[mode]["shape"] == [2, 12] and seen[mode]["max_id"] < TINY["tokenizer_vocab_size"], seen
    assert seen["greedy"]["cached_equals_uncached"] and seen["beam"]["cached_equals_uncached"], seen
    assert seen["pipeline"].startswith("w5 w6 w7") and len(seen["pipeline"].split()) > 3, seen
    assert "dynamic cache" in seen["static"], seen
    assert seen["checkpointing_blocks"] == 12 and seen["checkpointed_grads_equal"], seen
