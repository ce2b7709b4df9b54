"""LTG-BERT behaviour beyond the conformance suite: the original init schedule, the two position splits, the two
attention implementations, cumulative hidden states."""

import math

import pytest
import torch
from transformers import AutoModelForMaskedLM

from modeling import device_value_checks
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM, LtgBertModel

TRUNCATED_STD = 0.8796  # std of a standard normal truncated at +-2 sigma


def config(**overrides):
    defaults = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=24, position_bucket_size=4, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return LtgBertConfig(**{**defaults, **overrides})


def inputs(vocab_size=99):
    input_ids = torch.randint(5, vocab_size, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": mask}


@pytest.mark.parametrize("build", ["direct", "from_config"])
def test_init_follows_the_original_schedule(build):
    """Truncated normal, std sqrt(2 / 5d); feed-forward weights of layer i further scaled by sqrt(1 / 2(i+1))."""
    cfg = LtgBertConfig(vocab_size=512, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512)
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(cfg) if build == "direct" else AutoModelForMaskedLM.from_config(cfg)
    base = math.sqrt(2 / (5 * 256)) * TRUNCATED_STD
    layer = model.ltg_bert.layers[0]
    assert layer.attention.qk_proj.weight.std().item() == pytest.approx(base, rel=0.03)
    assert model.ltg_bert.embeddings.relative_embeddings.std().item() == pytest.approx(base, rel=0.1)
    for i, layer in enumerate(model.ltg_bert.layers):
        expected = base * math.sqrt(1 / (2 * (i + 1)))
        assert layer.mlp.up_proj.weight.std().item() == pytest.approx(expected, rel=0.03), f"layer {i} up_proj"
        assert layer.mlp.down_proj.weight.std().item() == pytest.approx(expected, rel=0.03), f"layer {i} down_proj"
        assert layer.mlp.up_proj.weight.abs().max().item() <= 2 * expected / TRUNCATED_STD
    assert torch.all(layer.attention.qk_proj.bias == 0)


def test_both_position_splits_are_distinct_models():
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config()).eval()
    other = LtgBertForMaskedLM(config(position_qk_split="per_head_interleaved")).eval()
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(model(**inputs()).logits, other(**inputs()).logits, atol=1e-3)


def test_eager_and_sdpa_attention_agree():
    torch.manual_seed(0)
    sdpa = AutoModelForMaskedLM.from_config(config(), attn_implementation="sdpa").eval()
    eager = AutoModelForMaskedLM.from_config(config(), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    torch.testing.assert_close(eager(**inputs()).logits, sdpa(**inputs()).logits, atol=1e-5, rtol=1e-5)


def test_training_and_eval_formulations_of_the_position_terms_agree():
    """Training picks the relative-position vectors by one-hot matmuls, eval gathers them (the original's order);
    without dropout both must give the same logits and the same gradients, padding and log-spaced buckets included."""
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config(max_position_embeddings=24, position_bucket_size=4))
    batch = inputs()
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], -100)
    results = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        model.zero_grad()
        out = model(**batch, labels=labels)
        out.loss.backward()
        results[mode] = (out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["train"][0], results["eval"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["train"][1].items():
        torch.testing.assert_close(grad, results["eval"][1][name], atol=1e-6, rtol=1e-4, msg=name)
    assert results["train"][1]["ltg_bert.embeddings.relative_embeddings"].abs().sum() > 0


def test_attention_probabilities_ignore_padding():
    model = LtgBertModel(config()).eval()
    probs = model(**inputs(), output_attentions=True).attentions
    assert len(probs) == 2
    assert torch.all(probs[0][1, :, :, 6:] == 0)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(3, 4, 9))


def test_hidden_states_are_cumulative():
    """hidden_states[k] is the state after k layers (the original wrapper returned differences instead)."""
    model = LtgBertModel(config()).eval()
    outputs = model(**inputs(), output_hidden_states=True)
    assert len(outputs.hidden_states) == 3
    torch.testing.assert_close(outputs.hidden_states[-1], outputs.last_hidden_state, atol=0, rtol=0)
    model.layers = model.layers[:1]  # the same model cut after its first layer
    torch.testing.assert_close(model(**inputs()).last_hidden_state, outputs.hidden_states[1], atol=0, rtol=0)


def test_sparse_prediction_gives_the_dense_logits_and_loss_at_labelled_positions():
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config()).eval()
    batch = inputs()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, [1, 4]], labels[2, 8] = batch["input_ids"][0, [1, 4]], batch["input_ids"][2, 8]
    dense = model(**batch, labels=labels)
    sparse = model(**batch, labels=labels, sparse_prediction=True)
    assert sparse.logits.shape == (3, 99)
    assert torch.allclose(sparse.logits, dense.logits[labels != -100], atol=1e-6)
    assert torch.allclose(sparse.loss, dense.loss, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        model(**batch, sparse_prediction=True)
    with pytest.raises(ValueError, match="labels shape"):
        model(**batch, labels=labels[:, :5], sparse_prediction=True)


def test_value_checks_always_run_on_cpu_tensors():
    """`check_values_on_device=False` (set by MaskedLMTrainer, whose collator checks batches) only skips the checks
    that would be host-device syncs; on the CPU they are free and stay on, for ids and labels alike."""
    model = LtgBertForMaskedLM(config())
    on_accelerator = torch.empty(2, 3, dtype=torch.long, device="meta")  # any non-CPU device
    assert model._values_checked(on_accelerator) and model.ltg_bert._values_checked(on_accelerator)
    batch = inputs()
    with device_value_checks(model, False):
        assert not model._values_checked(on_accelerator) and not model.ltg_bert._values_checked(on_accelerator)
        with pytest.raises(ValueError, match="outside"):
            model(input_ids=torch.full_like(batch["input_ids"], 99))
        with pytest.raises(ValueError, match="labels must be -100"):
            model(**batch, labels=torch.full_like(batch["input_ids"], 99))
        with pytest.raises(ValueError, match="labels must be -100"):
            model(**batch, labels=torch.full_like(batch["input_ids"], -5))
        assert model(**batch, labels=torch.full_like(batch["input_ids"], -100)).loss is not None
    assert model._values_checked(on_accelerator)  # restored
