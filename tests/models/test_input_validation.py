"""Bad configs and bad inputs are refused with a ValueError that names the field or the input, before any work
(issue 14, points 6-10, 14, 19); checks common to every architecture live in the conformance mixin."""

import inspect
import re
from pathlib import Path

import pytest
import torch

import modeling
from modeling import ARCHITECTURES

ROOT = Path(modeling.__file__).parent
SHARED_FIELD_CHECKS = ("# ---- shared field checks (begin)", "# ---- shared field checks (end) ----")


def config_parameters(config_class) -> set:
    return set(inspect.signature(config_class.__init__).parameters)


# (field, bad value): every config class that has the field must refuse the value, naming the field
BAD_FIELDS = [
    ("num_hidden_layers", 0), ("num_hidden_layers", -2), ("num_hidden_layers", "2"), ("num_hidden_layers", True),
    ("num_hidden_layers", 2.0), ("num_hidden_layers", None), ("hidden_size", "32"), ("hidden_size", -64),
    ("num_attention_heads", 0), ("num_attention_heads", -4), ("vocab_size", 0), ("intermediate_size", -1),
    ("max_position_embeddings", 0), ("layer_norm_eps", 0.0), ("layer_norm_eps", -1e-5),
    ("layer_norm_eps", float("nan")), ("dropout", 1.0), ("dropout", -0.1), ("dropout", "0.1"),
    ("hidden_dropout_prob", 1.5), ("attention_probs_dropout_prob", -0.5), ("classifier_dropout", 1.0),
    ("window_block_size", 0), ("sliding_window_num_blocks", "8"), ("block_size", 0), ("block_size", "4"),
    ("num_senses", 0), ("num_latents", -1), ("cond_dim", 0), ("head_dim", 0), ("rotary_base", float("inf")),
    ("noise_eps", "0.001"), ("sampling_eps_min", "0.1"),
]
CASES = [pytest.param(model_type, field, value, id=f"{model_type}-{field}={value!r}")
         for model_type, (config_class, _) in ARCHITECTURES.items()
         for field, value in BAD_FIELDS if field in config_parameters(config_class)]


@pytest.mark.parametrize("model_type,field,value", CASES)
def test_config_refuses_bad_field(model_type, field, value):
    config_class = ARCHITECTURES[model_type][0]
    with pytest.raises(ValueError, match=re.escape(field)) as refused:
        config_class(**{field: value})
    assert repr(value) in str(refused.value)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_config_refuses_special_token_ids_outside_the_vocabulary(model_type):
    config_class = ARCHITECTURES[model_type][0]
    vocab_size = config_class().vocab_size
    field = "pad_token_id" if model_type != "modded_gpt" else "bos_token_id"
    if model_type == "latent_wire":  # its padding id is fixed; a BOS id is not
        field = "bos_token_id"
    with pytest.raises(ValueError, match=field):
        config_class(**{field: vocab_size})
    with pytest.raises(ValueError, match="eos_token_id"):
        config_class(eos_token_id=[1, -1])


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_config_defaults_and_exports_still_load(model_type, tmp_path):
    config_class = ARCHITECTURES[model_type][0]
    config = config_class()
    config.save_pretrained(tmp_path)
    assert config_class.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_shared_field_checks_are_identical_in_every_config():
    """Each configuration file is exported alone, so each carries the same copy of the field checks."""
    sections = {}
    for model_type in ARCHITECTURES:
        text = (ROOT / model_type / f"configuration_{model_type}.py").read_text()
        match = re.search(re.escape(SHARED_FIELD_CHECKS[0]) + ".*?" + re.escape(SHARED_FIELD_CHECKS[1]), text, re.S)
        assert match, f"configuration_{model_type}.py lacks the shared field checks"
        sections[model_type] = match.group(0)
    assert len(set(sections.values())) == 1, "edit the shared field checks in every configuration file alike"


# ---- models: tiny instances ----
DIT_SIZES = dict(vocab_size=40, mask_token_id=39, pad_token_id=0, bos_token_id=1, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, cond_dim=12, max_position_embeddings=16, timestep_embedding_size=16,
                 dropout=0.0, zero_init_modulation=False)


def tiny(model_class, config_class, **sizes):
    torch.manual_seed(0)
    return model_class(config_class(**sizes)).eval()


def mdlm(**overrides):
    from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM
    return tiny(MdlmForMaskedDiffusionLM, MdlmConfig, **{**DIT_SIZES, **overrides})


def bd3lm(**overrides):
    from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
    return tiny(Bd3lmForMaskedDiffusionLM, Bd3lmConfig, **{**DIT_SIZES, "block_size": 4, **overrides})


def backpack():
    from modeling.backpack import BackpackConfig, BackpackForCausalLM
    return tiny(BackpackForCausalLM, BackpackConfig, vocab_size=50, hidden_size=32, num_senses=4, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, dropout=0.0)


def modded_gpt():
    from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
    return tiny(ModdedGptForCausalLM, ModdedGptConfig, vocab_size=64, tokenizer_vocab_size=50, eot_token_id=49,
                hidden_size=32, num_hidden_layers=4, num_attention_heads=2, head_dim=16, max_position_embeddings=16)


CLEAN = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11], [1, 12, 13, 14, 15, 16, 17, 18]])
NOISY = torch.tensor([[1, 39, 6, 39, 8, 39, 10, 39], [1, 12, 39, 14, 39, 16, 39, 18]])


# ---- point 6: timesteps outside the schedule's domain ----
@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
@pytest.mark.parametrize("t", [1.5, 0.0, -0.5, float("nan")])
def test_timesteps_outside_zero_one_are_refused(build, t):
    model = build()
    with pytest.raises(ValueError, match=re.escape("timesteps must lie in (0, 1]")):
        model(input_ids=NOISY, timesteps=torch.tensor([t, 0.5]), labels=CLEAN)


@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_timesteps_must_be_floating_and_shaped_per_sequence(build):
    model = build()
    with pytest.raises(ValueError, match="floating"):
        model(input_ids=NOISY, timesteps=torch.tensor([1, 1]), labels=CLEAN)
    with pytest.raises(ValueError, match="timesteps shape"):
        model(input_ids=NOISY, timesteps=torch.full((3,), 0.5), labels=CLEAN)
    assert torch.isfinite(model(input_ids=NOISY, timesteps=torch.tensor([1.0, 0.25]), labels=CLEAN).loss)


def test_mdlm_without_schedule_epsilon_refuses_t_one():
    """With noise_eps = 0, sigma(1) = -log(0): the NELBO weight at t = 1 is inf / inf; the domain is (0, 1)."""
    model = mdlm(noise_eps=0.0)
    with pytest.raises(ValueError, match=re.escape("(0, 1)")):
        model(input_ids=NOISY, timesteps=torch.tensor([1.0, 0.5]), labels=CLEAN)
    assert model.sample(num_samples=1, length=8, num_steps=4).shape == (1, 8)  # not time-conditioned: t unused


def test_trainer_noise_draw_refuses_an_interval_reaching_zero():
    from trainers.diffusion_trainer import MaskedDiffusionTrainer

    model = mdlm()
    model.config.sampling_eps = 0.0  # changed after construction, past the config's own check
    trainer = type("Trainer", (), {"model_type": "mdlm"})()
    with pytest.raises(ValueError, match="sampling_eps"):
        MaskedDiffusionTrainer.draw_noise(trainer, model, CLEAN, torch.Generator().manual_seed(0), True)


# ---- point 7: a last block shorter than block_size ----
def test_bd3lm_partial_last_block_is_the_padded_whole_block():
    """Not refused (the export probe and the likelihood suite pad to the batch's longest row, not to whole blocks):
    a partial last block is computed exactly as the whole block with its missing positions padded (attention 0), in
    the training and the generation pass."""
    model = bd3lm()
    padded = dict(attention_mask=torch.tensor([[1] * 6 + [0] * 2] * 2))
    short = model(input_ids=NOISY[:, :6], clean_ids=CLEAN[:, :6], timesteps=torch.full((2, 6), 0.5)).logits
    whole = model(input_ids=NOISY, clean_ids=CLEAN, timesteps=torch.full((2, 8), 0.5), **padded).logits
    torch.testing.assert_close(short, whole[:, :6], atol=0, rtol=0)
    torch.testing.assert_close(model(input_ids=CLEAN[:, :6]).logits,
                               model(input_ids=CLEAN, **padded).logits[:, :6], atol=0, rtol=0)


# ---- point 8: a row with nothing to attend to (all architectures: the mixin); the MDLM loss case of the issue ----
def test_mdlm_loss_refuses_a_row_of_padding_only():
    model = mdlm()
    with pytest.raises(ValueError, match="row of zeros"):
        model(input_ids=NOISY, attention_mask=torch.tensor([[1] * 8, [0] * 8]), timesteps=torch.tensor([0.5, 0.5]),
              labels=CLEAN)


def test_checks_that_read_values_follow_the_device_switch():
    """Checks that read tensor values (a host-device sync on an accelerator) are skipped exactly when
    `_values_checked` says so, as the id checks are while a trainer whose collator checked the batch trains; the
    checks of shapes and dtypes always run."""
    model, ids = mdlm(), torch.tensor([[5, 6, 7, 8]])
    model.mdlm._values_checked = lambda tensor: False
    model.mdlm(input_ids=ids, attention_mask=torch.zeros_like(ids), timesteps=torch.tensor([2.0]))
    with pytest.raises(ValueError, match="floating"):
        model.mdlm(input_ids=ids, timesteps=torch.tensor([1]))
    gpt = modded_gpt()
    gpt.model._values_checked = lambda tensor: False
    gpt(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 1000]]), attention_mask=torch.ones_like(ids))


# ---- point 9: position_ids ----
@pytest.mark.parametrize("build", [backpack, modded_gpt], ids=["backpack", "modded_gpt"])
@pytest.mark.parametrize("positions", [[-5, 0, 1, 2], [0, 1, 2, 1000], [0, 1, 2, 16]])
def test_position_ids_outside_the_table_are_refused(build, positions):
    model = build()
    with pytest.raises(ValueError, match=re.escape("position_ids must lie in [0, max_position_embeddings=16)")):
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), position_ids=torch.tensor([positions]))


@pytest.mark.parametrize("build", [backpack, modded_gpt], ids=["backpack", "modded_gpt"])
def test_position_ids_of_the_wrong_shape_or_dtype_are_refused(build):
    model = build()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    for positions in (torch.arange(3)[None], torch.arange(4.0)[None], torch.arange(4), torch.zeros(3, 4).long()):
        with pytest.raises(ValueError, match="position_ids must be an integer tensor of shape"):
            model(input_ids=ids, position_ids=positions)
    shared = model(input_ids=ids, position_ids=torch.arange(4)[None]).logits
    torch.testing.assert_close(shared, model(input_ids=ids, position_ids=torch.arange(4).expand(2, -1)).logits)


def test_shared_position_checks_are_identical():
    begin, end = "# ---- shared position checks (begin)", "# ---- shared position checks (end) ----"
    texts = [(ROOT / name / f"modeling_{name}.py").read_text() for name in ("backpack", "modded_gpt")]
    sections = [re.search(re.escape(begin) + ".*?" + re.escape(end), text, re.S) for text in texts]
    assert all(sections) and sections[0].group(0) == sections[1].group(0)


# ---- point 14: a BD3-LM prefix is clean text; the unified API (issue 17) marks generated positions by the mask ----
def test_bd3lm_sample_never_returns_the_mask_of_its_input():
    model = bd3lm()
    with pytest.raises(TypeError, match="prefix_ids"):  # replaced by input_ids, where the mask means "generate"
        model.sample(num_samples=2, length=8, prefix_ids=torch.tensor([[1, 5, 39, 6]]))
    sample = model.sample(num_samples=2, input_ids=torch.tensor([[1, 5, 39, 6]]), max_new_tokens=4)
    assert sample.shape == (2, 8) and not (sample == 39).any()
    assert (sample[:, [0, 1, 3]] == torch.tensor([1, 5, 6])).all()


# ---- point 19: labels that do not fit the batch (empty batches: the mixin) ----
@pytest.mark.parametrize("build", [mdlm, bd3lm], ids=["mdlm", "bd3lm"])
def test_diffusion_labels_of_another_batch_size_are_refused(build):
    model = build()
    timesteps = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="labels shape"):
        model(input_ids=NOISY, timesteps=timesteps, labels=torch.cat((CLEAN, CLEAN[:1])))  # a broadcast before
    with pytest.raises(ValueError, match="needs timesteps"):
        model(input_ids=NOISY, labels=CLEAN)


@pytest.mark.parametrize("model_type", ["ltg_bert", "modded_gpt"])
def test_sequence_classifier_labels_of_another_batch_size_are_refused(model_type):
    config_class, classes = ARCHITECTURES[model_type]
    sizes = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                 num_labels=1)
    if model_type == "ltg_bert":
        sizes.update(intermediate_size=40, position_bucket_size=4)
    else:
        sizes.update(tokenizer_vocab_size=60, eot_token_id=None, num_attention_heads=2, head_dim=16,
                     num_hidden_layers=4)
    model = tiny(classes["AutoModelForSequenceClassification"], config_class, **sizes)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="batch size 2"):
        model(input_ids=ids, labels=torch.tensor([0.5, 0.1, 0.3]))  # regression: mse_loss would broadcast
