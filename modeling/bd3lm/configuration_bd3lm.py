"""Configuration of BD3-LM (Arriola et al., 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
Language Models").

Reference implementation: kuleshov-group/bd3lms@1c3e8f43 (`models/dit.py`, `models/hf/configuration_bd3lm.py`,
`diffusion.py`, `noise_schedule.py`).
"""

import math

from transformers import PretrainedConfig

NOISE_SCHEDULES = ("loglinear",)


class Bd3lmConfig(PretrainedConfig):
    r"""
    Configuration for [`Bd3lmModel`] and [`Bd3lmForMaskedDiffusionLM`]: the MDLM DiT denoiser applied block by block.
    A sequence is cut into blocks of `block_size` tokens; each block is a masked-diffusion problem conditioned on the
    clean blocks before it, so `log p(x) = sum_b log p(x^b | x^{<b})`, each term bounded by its NELBO.

    Every field is written to `config.json`. `sampling_eps_min`/`sampling_eps_max` are also persistent buffers of
    [`Bd3lmForMaskedDiffusionLM`]: the buffers in a checkpoint are the trained values (the original's clipped-
    schedule search writes them) and win over these fields, which hubzoo keeps equal to them.

    Args:
        vocab_size (`int`, *optional*, defaults to 50258):
            Number of token ids, the mask token included.
        mask_token_id (`int`, *optional*):
            Id of the absorbing [MASK] state; defaults to `vocab_size - 1` (the original appends it to GPT-2).
        block_size (`int`, *optional*, defaults to 4):
            Tokens per diffusion block; `max_position_embeddings` must be a multiple of it. `block_size ==
            max_position_embeddings` is MDLM-like; 1 is autoregressive.
        sampling_eps_min (`float`, *optional*, defaults to 1e-3):
        sampling_eps_max (`float`, *optional*, defaults to 1.0):
            Training draws each block's mask rate t from [sampling_eps_min, sampling_eps_max] (0 < min < max <= 1).
            The likelihood bound is always reported on (1e-3, 1): clipped intervals give a biased bound.
        ignore_bos (`bool`, *optional*, defaults to `True`):
            The first token of every sequence (BOS) is never masked and, in evaluation, not scored.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, cond_dim, max_position_embeddings,
        adaln, time_conditioning, noise_schedule, noise_eps, dropout, rotary_base, timestep_embedding_size,
        layer_norm_eps, initializer_range, zero_init_modulation, tie_word_embeddings:
            As in [`MdlmConfig`]. `noise_eps` only caps the conditioning: sigma = min(-log(1 - t), -log(noise_eps)).
    """

    model_type = "bd3lm"

    def __init__(
        self,
        vocab_size=50258,
        mask_token_id=None,
        block_size=4,
        sampling_eps_min=1e-3,
        sampling_eps_max=1.0,
        ignore_bos=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=None,
        cond_dim=128,
        max_position_embeddings=1024,
        adaln=True,
        time_conditioning=False,
        noise_schedule="loglinear",
        noise_eps=1e-3,
        dropout=0.1,
        rotary_base=10000.0,
        timestep_embedding_size=256,
        layer_norm_eps=1e-5,
        initializer_range=0.02,
        zero_init_modulation=True,
        tie_word_embeddings=False,
        **kwargs,
    ):
        check_fields(
            positive_ints=dict(vocab_size=vocab_size, block_size=block_size, hidden_size=hidden_size,
                               num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                               intermediate_size=intermediate_size, cond_dim=cond_dim,
                               max_position_embeddings=max_position_embeddings,
                               timestep_embedding_size=timestep_embedding_size),
            positive_numbers=dict(sampling_eps_min=sampling_eps_min, sampling_eps_max=sampling_eps_max,
                                  rotary_base=rotary_base, layer_norm_eps=layer_norm_eps,
                                  initializer_range=initializer_range),
            probabilities=dict(dropout=dropout, noise_eps=noise_eps),
            optional=("intermediate_size",),
        )
        mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
        check_token_ids(vocab_size, dict(kwargs, mask_token_id=mask_token_id))
        validate_dit_fields(hidden_size, num_attention_heads, timestep_embedding_size, adaln, time_conditioning)
        validate_sampling_interval(sampling_eps_min, sampling_eps_max)
        if max_position_embeddings % block_size:
            raise ValueError(f"block_size ({block_size}) must divide max_position_embeddings "
                             f"({max_position_embeddings})")
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}")
        if not 0.0 < noise_eps < 1.0:
            raise ValueError(f"noise_eps must lie in (0, 1), got {noise_eps}")
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.block_size = block_size
        self.sampling_eps_min = float(sampling_eps_min)
        self.sampling_eps_max = float(sampling_eps_max)
        self.ignore_bos = ignore_bos
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.cond_dim = cond_dim
        self.max_position_embeddings = max_position_embeddings
        self.adaln = adaln
        self.time_conditioning = time_conditioning
        self.noise_schedule = noise_schedule
        self.noise_eps = noise_eps
        self.dropout = dropout
        self.rotary_base = rotary_base
        self.timestep_embedding_size = timestep_embedding_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.zero_init_modulation = zero_init_modulation
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def validate_sampling_interval(eps_min, eps_max):
    if not 0.0 < eps_min < eps_max <= 1.0:
        raise ValueError(f"sampling_eps_min/sampling_eps_max must satisfy 0 < min < max <= 1, got ({eps_min}, "
                         f"{eps_max})")


# Copied from modeling.mdlm.configuration_mdlm.validate_dit_fields
def validate_dit_fields(hidden_size, num_attention_heads, timestep_embedding_size, adaln, time_conditioning):
    """Checks shared by the diffusion configs (MDLM, BD3-LM)."""
    if hidden_size % num_attention_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                         f"({num_attention_heads})")
    if (hidden_size // num_attention_heads) % 2:
        raise ValueError(f"the head size ({hidden_size // num_attention_heads}) must be even for rotary embeddings")
    if timestep_embedding_size % 2:
        raise ValueError(f"timestep_embedding_size must be even, got {timestep_embedding_size}")
    if time_conditioning and not adaln:
        raise ValueError("time_conditioning needs adaln: the noise level reaches the blocks through the modulation")


# Copied from modeling.ltg_bert.configuration_ltg_bert[shared field checks]
# ---- shared field checks (begin): copied from configuration_ltg_bert.py into every configuration_<type>.py (checked
# by utils/check_copies.py); each exported configuration file must stand alone. ----

FIELD_RULES = {"positive_ints": "an int > 0", "non_negative_ints": "an int >= 0",
               "positive_numbers": "a finite number > 0", "probabilities": "a number in [0, 1)"}


def check_fields(optional=(), **rules) -> None:
    """Refuse a config field whose value breaks its rule, naming the field and the value. Each keyword is a rule of
    `FIELD_RULES` mapping field names to values; fields in `optional` may also be None (their default is derived).
    Called before any arithmetic on the fields, so that '32' or True is named instead of failing later."""
    for rule, fields in rules.items():
        for name, value in fields.items():
            if not (value is None and name in optional or follows_rule(rule, value)):
                raise ValueError(f"config field {name} must be {FIELD_RULES[rule]}"
                                 f"{' or None' if name in optional else ''}, got {value!r}")


def follows_rule(rule: str, value) -> bool:
    # bool is an int subclass, and True would pass as 1 layer
    if isinstance(value, bool) or not isinstance(value, int if rule.endswith("_ints") else (int, float)):
        return False
    if rule == "probabilities":
        return 0 <= value < 1
    return value >= 0 if rule == "non_negative_ints" else math.isfinite(value) and value > 0


def check_token_ids(vocab_size: int, fields: dict) -> None:
    """Every `*_token_id` among `fields` (a config's keyword arguments; None: unset; a list: several, as `eos_token_id`
    may be) must lie in the vocabulary [0, vocab_size)."""
    for name, value in fields.items():
        if not name.endswith("_token_id"):
            continue
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and not (follows_rule("non_negative_ints", token_id) and token_id < vocab_size):
                raise ValueError(f"config field {name} must be a token id in [0, {vocab_size}) or None, "
                                 f"got {value!r}")


# ---- shared field checks (end) ----


__all__ = ["Bd3lmConfig"]
