"""Configuration of Backpack language models (Hewitt et al., 2023, "Backpack Language Models").

Two originals with different math, both expressed here: `stanfordnlp/backpack-gpt2` (the paper's Hub model; sense
network "stanford") and `SwordElucidator/nanoBackpackLM@9d1e2a0` (sense network "nano"). Their remaining differences
are named fields (biases, the scale of the sense weights, GPT-2's inverse-layer-index attention scaling).
"""

import math

from transformers import PretrainedConfig

SENSE_NETWORKS = ("stanford", "nano")


class BackpackConfig(PretrainedConfig):
    r"""
    Configuration for [`BackpackModel`] and [`BackpackForCausalLM`]: every token id has `num_senses` sense vectors
    (a function of the id alone, from the sense network); a causal transformer (the contextualizer) reads the sequence
    and produces, per sense, weights α over the positions so far; the output at position i is
    `Σ_senses Σ_j α[sense, i, j] · sense_vector[sense, token_j]`, unembedded by the (tied) input embedding.

    Args:
        vocab_size (`int`, *optional*, defaults to 50264):
            Rows of the shared embedding (input, senses, contextualizer, head).
        hidden_size (`int`, *optional*, defaults to 768):
            Width d of embeddings, sense vectors and the contextualizer.
        num_senses (`int`, *optional*, defaults to 16):
            Sense vectors per token id, k; must divide `hidden_size` (α is computed from d/k-wide heads).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Blocks of the contextualizer (nanoBackpackLM builds `n_layer - 1`: the converter stores the real count).
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads of the contextualizer.
        intermediate_size (`int`, *optional*):
            MLP width of the contextualizer blocks and of the sense network's first MLP; defaults to `4 * hidden_size`.
        sense_intermediate_size (`int`, *optional*):
            Hidden width of the sense network's last MLP (the one that emits the k·d sense values); defaults to
            `4 * hidden_size` (`sense_intermediate_scale * d` in backpack-gpt2).
        max_position_embeddings (`int`, *optional*, defaults to 512):
            Rows of the contextualizer's position embedding; the longest input.
        sense_network (`str`, *optional*, defaults to `"stanford"`):
            `"stanford"`: `r = LN(e) + e; h = LN_1(r); r = r + MLP(h); senses = MLP_out(LN_2(r))`.
            `"nano"`: `x = LN_1(e + MLP_1(e)); senses = LN_2(x + MLP_2(x))` with `LN_2` over all k·d values at once.
        use_bias (`bool`, *optional*, defaults to `True`):
            Biases in every linear layer and LayerNorm of the contextualizer and the sense network (nanoBackpackLM's
            training script saves `bias=False` models).
        sense_weight_bias (`bool`, *optional*, defaults to `True`):
            Bias of the projection to α's queries and keys (backpack-gpt2: yes; nanoBackpackLM: never).
        scale_sense_weights (`bool`, *optional*, defaults to `True`):
            Divide α's scores by sqrt(d/k) (backpack-gpt2) or not (nanoBackpackLM).
        scale_attn_by_inverse_layer_idx (`bool`, *optional*, defaults to `True`):
            GPT-2's option: block i divides its attention scores by i + 1 besides sqrt(head_dim) (backpack-gpt2 sets it;
            transformers 4.57's SDPA path silently drops it, this implementation never does).
        hidden_act (`str`, *optional*, defaults to `"gelu_new"`):
            Activation of every MLP: `"gelu_new"` (tanh approximation, both originals) or `"gelu"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every LayerNorm.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout on the embeddings, attention probabilities, residual branches and α.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal init of embeddings and linear weights (GPT-2's).
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            The head is the input embedding (both originals); untied heads are possible for new models.
        bos_token_id, eos_token_id, pad_token_id (`int`, *optional*):
            Special token ids for `generate` (`eos_token_id` may be a list). None (the default, and what an export
            whose config.json lacks them gets) means the tokenizer has no such token; transformers 4 gave every
            config these None defaults, transformers 5 leaves them to the model's config.
        use_cache (`bool`, *optional*, defaults to `True`):
            Return and extend a KV cache outside training (`generate` reads it too).
    """

    model_type = "backpack"

    def __init__(
        self,
        vocab_size=50264,
        hidden_size=768,
        num_senses=16,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=None,
        sense_intermediate_size=None,
        max_position_embeddings=512,
        sense_network="stanford",
        use_bias=True,
        sense_weight_bias=True,
        scale_sense_weights=True,
        scale_attn_by_inverse_layer_idx=True,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        dropout=0.1,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=True,
        **kwargs,
    ):
        check_fields(
            positive_ints=dict(vocab_size=vocab_size, hidden_size=hidden_size, num_senses=num_senses,
                               num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                               intermediate_size=intermediate_size, sense_intermediate_size=sense_intermediate_size,
                               max_position_embeddings=max_position_embeddings),
            positive_numbers=dict(layer_norm_eps=layer_norm_eps, initializer_range=initializer_range),
            probabilities=dict(dropout=dropout),
            optional=("intermediate_size", "sense_intermediate_size"),
        )
        check_token_ids(vocab_size, dict(kwargs, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                                         pad_token_id=pad_token_id))
        if sense_network not in SENSE_NETWORKS:
            raise ValueError(f"sense_network must be one of {SENSE_NETWORKS}, got {sense_network!r}")
        if hidden_size % num_senses:
            raise ValueError(f"num_senses ({num_senses}) must divide hidden_size ({hidden_size})")
        if hidden_size % num_attention_heads:
            raise ValueError(f"num_attention_heads ({num_attention_heads}) must divide hidden_size ({hidden_size})")
        if hidden_act not in ("gelu_new", "gelu"):
            raise ValueError(f"hidden_act must be 'gelu_new' or 'gelu', got {hidden_act!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_senses = num_senses
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.sense_intermediate_size = 4 * hidden_size if sense_intermediate_size is None else sense_intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.sense_network = sense_network
        self.use_bias = use_bias
        self.sense_weight_bias = sense_weight_bias
        self.scale_sense_weights = scale_sense_weights
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        # passed on as well: transformers 4.57's base __init__ sets these three itself (to None when not given)
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id


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


__all__ = ["BackpackConfig"]
