"""Configuration of MDLM (Sahoo et al., 2024, "Simple and Effective Masked Diffusion Language Models").

Reference implementation: kuleshov-group/mdlm@c112c526 (`models/dit.py`, `diffusion.py`, `noise_schedule.py`).
"""

import math

from transformers import PretrainedConfig

NOISE_SCHEDULES = ("loglinear",)


class MdlmConfig(PretrainedConfig):
    r"""
    Configuration for [`MdlmModel`] and [`MdlmForMaskedDiffusionLM`]: a DiT denoiser (rotary attention, adaLN
    modulation) trained with the continuous-time masked-diffusion NELBO under the SUBS parameterisation.

    Every field is written to `config.json`; nothing relies on constructor defaults when an export is loaded (the
    original `MDLMConfig` defaulted `cond_dim` to 129 while its saved configs said 128).

    Args:
        vocab_size (`int`, *optional*, defaults to 50258):
            Number of token ids, the mask token included (GPT-2's 50257 + the appended mask in the original OWT model).
        mask_token_id (`int`, *optional*):
            Id of the absorbing [MASK] state. Defaults to `vocab_size - 1` (the original appends the mask to a
            tokenizer that has none); hubzoo's trainers always take it from the tokenizer.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the residual stream (`hidden_dim` in the original Hub config).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of DiT blocks (`n_blocks`).
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block (`n_heads`); must divide `hidden_size`.
        intermediate_size (`int`, *optional*):
            Width of the GELU(tanh) MLP; defaults to `4 * hidden_size` (the original's `mlp_ratio=4`).
        cond_dim (`int`, *optional*, defaults to 128):
            Width of the conditioning vector that drives the adaLN modulation.
        max_position_embeddings (`int`, *optional*, defaults to 1024):
            Longest sequence the model accepts (`model_length`, the training length).
        adaln (`bool`, *optional*, defaults to `True`):
            adaLN modulation (shift, scale, gate) in every block and the output layer. The original always has it for
            its bidirectional denoiser; without it the gates are 1.
        time_conditioning (`bool`, *optional*, defaults to `False`):
            Feed the noise level sigma(t) to the conditioning MLP. When `False` (the original default and the released
            models), sigma is replaced by zeros and the modulation is a learned constant: SUBS makes the denoiser's
            target independent of t.
        noise_schedule (`str`, *optional*, defaults to `"loglinear"`):
            The forward process: `"loglinear"`, sigma(t) = -log(1 - (1 - noise_eps) t), so a token is masked with
            probability (1 - noise_eps) t and the NELBO weight is sigma'(t) / expm1(sigma(t)) = 1 / t.
        noise_eps (`float`, *optional*, defaults to 1e-3):
            The schedule's epsilon (`LogLinearNoise(eps=1e-3)`).
        sampling_eps (`float`, *optional*, defaults to 1e-3):
            Lower end of the time interval [sampling_eps, 1] the training and evaluation NELBO draws t from.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the attention and MLP outputs before their gated residual additions.
        rotary_base (`float`, *optional*, defaults to 10000.0):
            Base of the rotary frequencies.
        timestep_embedding_size (`int`, *optional*, defaults to 256):
            Width of the sinusoidal embedding of sigma before the conditioning MLP; even.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the bias-free LayerNorms (computed in float32, as the original).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal init of embeddings and linear layers.
        zero_init_modulation (`bool`, *optional*, defaults to `True`):
            Zero-initialise the adaLN projections and the output projection (DiT's adaLN-Zero, as the original): at
            init every block is the identity and the logits are zero. Turn off only to exercise gradients at init.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the output projection shares the input embedding (the original's is separate).
    """

    model_type = "mdlm"

    def __init__(
        self,
        vocab_size=50258,
        mask_token_id=None,
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
        sampling_eps=1e-3,
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
            positive_ints=dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                               cond_dim=cond_dim, max_position_embeddings=max_position_embeddings,
                               timestep_embedding_size=timestep_embedding_size),
            positive_numbers=dict(rotary_base=rotary_base, layer_norm_eps=layer_norm_eps,
                                  initializer_range=initializer_range),
            probabilities=dict(dropout=dropout, noise_eps=noise_eps, sampling_eps=sampling_eps),
            optional=("intermediate_size",),
        )
        mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
        check_token_ids(vocab_size, dict(kwargs, mask_token_id=mask_token_id))
        validate_dit_fields(hidden_size, num_attention_heads, timestep_embedding_size, adaln, time_conditioning)
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}")
        if not 0.0 <= noise_eps < 1.0:
            raise ValueError(f"noise_eps must lie in [0, 1), got {noise_eps}")
        if not 0.0 < sampling_eps < 1.0:
            raise ValueError(f"sampling_eps must lie in (0, 1), got {sampling_eps}")
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
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
        self.sampling_eps = sampling_eps
        self.dropout = dropout
        self.rotary_base = rotary_base
        self.timestep_embedding_size = timestep_embedding_size
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.zero_init_modulation = zero_init_modulation
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


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


__all__ = ["MdlmConfig"]
