"""Bad configs and bad inputs are refused with a ValueError that names the field or the input, before any work
(issue 14, points 6-10, 14, 19); checks common to every architecture live in the conformance mixin."""

import inspect
import re
from pathlib import Path

import pytest
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

