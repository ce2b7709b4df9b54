"""Configuration of LTG-BERT (Samuel et al., 2023, "Trained on 100 million words and still in shape").

Reference implementation: ltgoslo/ltg-bert (`babylm/train/model.py`, and the Hub wrapper `modeling_ltgbert.py`).
"""

import math

from transformers import PretrainedConfig

# How the projected relative-position embeddings are split into their query and key halves. The original code exists
# in two conventions that produce different models from the same weights (see `LtgBertConfig.position_qk_split`).
POSITION_QK_SPLITS = ("chunk_first", "per_head_interleaved")


class LtgBertConfig(PretrainedConfig):
    r"""
    Configuration for [`LtgBertModel`] and its task heads.

    Args:
        vocab_size (`int`, *optional*, defaults to 16384):
            Number of token ids the model accepts; ids outside `[0, vocab_size)` raise an error.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of encoder layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per layer; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 2048):
            Width of the GEGLU feed-forward (the input projection is twice as wide: value and gate).
        max_position_embeddings (`int`, *optional*, defaults to 512):
            Longest sequence the model accepts; it also sets where the log-spaced relative buckets end.
        position_bucket_size (`int`, *optional*, defaults to 32):
            Relative offsets up to `position_bucket_size // 2` get their own embedding, longer ones share log-spaced
            buckets; there are `2 * position_bucket_size - 1` relative embeddings.
        position_qk_split (`str`, *optional*, defaults to `"chunk_first"`):
            How `in_proj_qk(relative_embeddings)` is split into query and key position projections.
            `"chunk_first"`: first half of the features is the query, second half the key, as for the content
            query/key (BabyLM training code, ELC-BERT, NorBERT-3). `"per_head_interleaved"`: the features are viewed
            per head and each head's slice is halved (the classic `LtgBertForMaskedLM` Hub wrapper and the BNC
            training code). Checkpoint keys are identical for both, so converted checkpoints must state which one
            they were trained with.
        layer_norm_eps (`float`, *optional*, defaults to 1e-7):
            Epsilon of every LayerNorm.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout on embeddings, sublayer outputs and the MLM head.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout on attention probabilities and on the relative embeddings before projection.
        classifier_dropout (`float`, *optional*):
            Dropout of the classification heads; defaults to `hidden_dropout_prob`.
        initializer_range (`float`, *optional*):
            Standard deviation of the truncated-normal init (cut at two standard deviations). Defaults to the
            original's `sqrt(2 / (5 * hidden_size))`; feed-forward weights of layer `i` are further scaled by
            `sqrt(1 / (2 * (i + 1)))`.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the MLM output projection shares the word-embedding matrix (the original always does).
    """

    model_type = "ltg_bert"

    def __init__(
        self,
        vocab_size=16384,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=2048,
        max_position_embeddings=512,
        position_bucket_size=32,
        position_qk_split="chunk_first",
        layer_norm_eps=1e-7,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        classifier_dropout=None,
        initializer_range=None,
        tie_word_embeddings=True,
        **kwargs,
    ):
        check_fields(
            positive_ints=dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                               max_position_embeddings=max_position_embeddings,
                               position_bucket_size=position_bucket_size),
            positive_numbers=dict(layer_norm_eps=layer_norm_eps, initializer_range=initializer_range),
            probabilities=dict(hidden_dropout_prob=hidden_dropout_prob,
                               attention_probs_dropout_prob=attention_probs_dropout_prob,
                               classifier_dropout=classifier_dropout),
            optional=("classifier_dropout", "initializer_range"),
        )
        check_token_ids(vocab_size, kwargs)
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        if position_qk_split not in POSITION_QK_SPLITS:
            raise ValueError(f"position_qk_split must be one of {POSITION_QK_SPLITS}, got {position_qk_split!r}")
        if not 2 <= position_bucket_size < max_position_embeddings:
            raise ValueError(
                f"position_bucket_size ({position_bucket_size}) must be at least 2 and smaller than "
                f"max_position_embeddings ({max_position_embeddings})"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.position_bucket_size = position_bucket_size
        self.position_qk_split = position_qk_split
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.initializer_range = (
            math.sqrt(2.0 / (5.0 * hidden_size)) if initializer_range is None else initializer_range
        )
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


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


__all__ = ["LtgBertConfig"]
