"""LTG-BERT against transformers' model contract (issue 15): gradient checkpointing through
`GradientCheckpointingLayer` (`every_n_layers` honoured), torch.export / torch.compile, the attention interface
(eager, sdpa, flex_attention), `inputs_embeds`, PEFT's task wrappers, and the same on transformers 4.57."""

import json
import subprocess

import pytest
import torch
from transformers import AutoModelForMaskedLM

from modeling.ltg_bert import (
    LtgBertForMaskedLM,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
)
from modeling.ltg_bert import modeling_ltg_bert
from tests.compat_env import REPO_ROOT, compat_python
from tests.models.ltg_bert.compat_driver import batch, config, first_tensor, gradients

CLASSES = (LtgBertModel, LtgBertForMaskedLM, LtgBertForSequenceClassification, LtgBertForTokenClassification)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_honours_every_n_layers_and_keeps_the_gradients(use_reentrant):
    """Layers 0 and 2 of 4 are checkpointed (their forward runs again in backward), 1 and 3 keep their activations;
    the gradients equal the unchecked ones."""
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config())
    inputs = batch()
    plain = gradients(model, inputs)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant},
                                        every_n_layers=2)
    assert [layer.gradient_checkpointing for layer in model.ltg_bert.layers] == [True, False, True, False]
    calls = [0] * 4
    for index, layer in enumerate(model.ltg_bert.layers):
        # a pre-hook: non-reentrant recomputation stops as soon as the saved tensors are back, before outputs
        layer.attention.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(
            index, calls[index] + 1))
    checked = gradients(model, inputs)
    assert calls == [2, 1, 2, 1], "a checkpointed layer runs its forward again during backward"
    assert plain.keys() == checked.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checked[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    model.gradient_checkpointing_disable()
    calls[:] = [0] * 4
    gradients(model, inputs)
    assert calls == [1, 1, 1, 1]


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda cls: cls.__name__)
def test_torch_export_gives_the_eager_outputs_and_leaves_later_eager_forwards_real(model_class):
    """The export is the first forward of this config in the process (max_position_embeddings 21 is used nowhere
    else), so the relative-position table is first built while tracing: it must not be cached as a fake tensor."""
    torch.manual_seed(0)
    model = model_class(config(max_position_embeddings=21, num_hidden_layers=2)).eval()
    inputs = batch()
    exported = torch.export.export(model, args=(), kwargs=inputs)
    after = first_tensor(model(**inputs))
    assert type(after) is torch.Tensor, f"an eager forward after torch.export returned a {type(after).__name__}"
    torch.testing.assert_close(first_tensor(exported.module()(**inputs)), after, atol=1e-5, rtol=1e-5)
    # The same computation with the table built outside any trace.
    for function in vars(modeling_ltg_bert).values():
        if hasattr(function, "cache_clear"):
            function.cache_clear()
    torch.testing.assert_close(first_tensor(model(**inputs)), after, atol=0, rtol=0)


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda cls: cls.__name__)
def test_torch_compile_fullgraph_gives_the_eager_outputs(model_class):
    """`fullgraph=True`: no graph break (the host-side value checks are skipped while tracing). The aot_eager
    backend traces forward and backward graphs with fake tensors like inductor, without a C++ build per class."""
    torch.manual_seed(0)
    model = model_class(config(max_position_embeddings=22, num_hidden_layers=2)).eval()
    inputs = batch()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    traced = first_tensor(compiled(**inputs))
    eager = first_tensor(model(**inputs))
    assert type(eager) is torch.Tensor
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-5)
    # eager keeps its checks
    with pytest.raises(ValueError, match="outside"):
        model(input_ids=torch.full((1, 3), 99))


def test_value_checks_are_skipped_only_while_tracing():
    model = LtgBertModel(config())
    on_accelerator = torch.empty(2, 3, dtype=torch.long, device="meta")
    assert model._values_checked(on_accelerator)
    seen = []
    model._check_inputs = lambda *args: seen.append(model._values_checked(on_accelerator))  # noqa: E731
    torch.compile(lambda ids: model(ids).last_hidden_state, fullgraph=True, backend="eager")(batch()["input_ids"])
    assert seen == [False]


def test_eager_sdpa_and_flex_attention_agree_and_eager_returns_probabilities():
    torch.manual_seed(0)
    reference = AutoModelForMaskedLM.from_config(config(), attn_implementation="eager").eval()
    inputs = batch()
    expected = reference(**inputs).logits
    for implementation in ("sdpa", "flex_attention"):
        model = AutoModelForMaskedLM.from_config(config(), attn_implementation=implementation).eval()
        model.load_state_dict(reference.state_dict())
        assert model.config._attn_implementation == implementation
        with torch.no_grad():  # torch 2.13's flex attention has no backward on CPU
            output = model(**inputs)
        torch.testing.assert_close(output.logits, expected, atol=1e-5, rtol=1e-5, msg=implementation)
        assert output.attentions is None
    # Probabilities: rows sum to one, padded keys get exactly zero, and they reproduce the layer's context.
    probabilities = reference(**inputs, output_attentions=True).attentions
    assert len(probabilities) == 4 and probabilities[0].shape == (3, 4, 9, 9)
    torch.testing.assert_close(probabilities[0].sum(-1), torch.ones(3, 4, 9))
    assert torch.all(probabilities[0][1, :, :, 6:] == 0)


def test_attention_implementation_can_be_switched_and_flash_attention_is_refused():
    model = LtgBertModel(config())
    assert type(model)._can_set_attn_implementation()
    model.set_attn_implementation("sdpa")
    assert all(layer.attention.config._attn_implementation == "sdpa" for layer in model.layers)
    with pytest.raises((ValueError, ImportError)):
        model.set_attn_implementation("flash_attention_2")


@pytest.mark.parametrize("model_class", CLASSES, ids=lambda cls: cls.__name__)
def test_inputs_embeds_equal_the_embedding_lookup(model_class):
    torch.manual_seed(0)
    model = model_class(config()).eval()
    inputs = batch()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    by_ids = first_tensor(model(**inputs))
    by_embeds = first_tensor(model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]))
    torch.testing.assert_close(by_embeds, by_ids, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(**inputs, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one"):
        model(attention_mask=inputs["attention_mask"])
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=embeds[..., :8])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"][:, :4])


def test_peft_seq_cls_wrapper_trains_the_classifier():
    """PEFT's `task_type="SEQ_CLS"` wrapper passes `inputs_embeds=None` (and the other BERT keywords)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(LtgBertForSequenceClassification(config()),
                           LoraConfig(task_type="SEQ_CLS", target_modules="all-linear", r=4, lora_alpha=8))
    output = model(**batch(), labels=torch.tensor([0, 2, 1]))
    output.loss.backward()
    lora = {name: p.grad for name, p in model.named_parameters() if "lora_B" in name}
    assert lora and all(grad is not None for grad in lora.values())
    assert any(grad.abs().sum() > 0 for grad in lora.values())
    head = [p for name, p in model.named_parameters() if "classifier" in name and "modules_to_save" in name]
    assert head and all(p.requires_grad and p.grad is not None for p in head)


def test_checkpointing_and_attention_interface_on_transformers_4_57():
    python = compat_python("4.57.6")
    proc = subprocess.run([str(python), "-m", "tests.models.ltg_bert.compat_driver"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["transformers"] == "4.57.6"
    assert result["layers_are_checkpointing_layers"]
    assert result["layers_checkpointed"] == [True, True, True]
    assert result["max_gradient_difference"] <= 1e-6
    assert result["sdpa_calls"] == 3, "one scaled_dot_product_attention call per layer, under sdpa only"
    assert result["max_eager_sdpa_difference"] <= 1e-5
    assert "needs transformers 5" in result["flex"]
