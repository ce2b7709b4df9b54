"""Configuration of a LatentWire: one learned latent prefix that conditions several frozen decoder LMs.

The idea of SujeethJinesh/LatentWire (2025): a byte-level encoder reads a text, M learned queries pool it into M
latent vectors, and one small adapter per decoder turns those into M soft-prefix embeddings for that decoder. Only
the encoder and the adapters are trained and saved; the decoders are frozen `AutoModelForCausalLM`s, named here and
re-attached at load.
"""

import math

from transformers import PretrainedConfig

DECODER_FIELDS = ("name", "hidden_size", "name_or_path", "revision", "anchor_text", "bos_after_prefix",
                  "embedding_rms", "anchor_ids", "tokenizer_size")


class LatentWireConfig(PretrainedConfig):
    r"""
    Configuration for [`LatentWireModel`].

    Args:
        vocab_size (`int`, *optional*, defaults to 257):
            Byte ids 0-255 and the padding id 256 (a zero byte is text, never padding).
        hidden_size (`int`, *optional*, defaults to 256):
            Width d_z of the byte encoder and of the latents.
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Pre-norm transformer layers of the byte encoder (bidirectional; padding is never attended).
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the encoder layers and of the latent queries' cross-attention.
        intermediate_size (`int`, *optional*):
            MLP width of the encoder layers and the pooler; defaults to `4 * hidden_size`.
        num_latents (`int`, *optional*, defaults to 32):
            M, the number of latent vectors, i.e. of prefix positions each decoder reads.
        max_position_embeddings (`int`, *optional*, defaults to 2048):
            The longest byte input (sinusoidal positions; longer inputs are refused, never cut silently).
        decoders (`list[dict]`, *optional*):
            One entry per frozen decoder: `name` (an identifier), `hidden_size` (its embedding width, the adapter's
            output), and optionally `name_or_path` + `revision` (where `load_decoders` finds it), `anchor_text`
            (read after the prefix; default `"Answer: "`), `bos_after_prefix` (insert the decoder's BOS between prefix
            and anchor; default False). Set when a decoder is first attached and checked at every later attach:
            `embedding_rms` (the RMS of its input embeddings, the adapter's output scale), `anchor_ids` (the anchor
            in its tokenizer) and `tokenizer_size` (the length of its tokenizer).
        adapter_scale_init (`float`, *optional*, defaults to 1.0):
            Initial value of each adapter's learnable output scale.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every LayerNorm.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the byte embeddings, attention probabilities and residual branches.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal init of linear weights and latent queries.
        byte_embedding_std (`float`, *optional*, defaults to 1.0):
            Std of the byte embeddings' normal init: the scale of the sinusoidal positions added to them (as in the
            original, which kept torch's N(0, 1)); at 0.02 the positions drown the bytes and the wire learns slowly.
    """

    model_type = "latent_wire"

    def __init__(
        self,
        vocab_size=257,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=None,
        num_latents=32,
        max_position_embeddings=2048,
        decoders=None,
        adapter_scale_init=1.0,
        layer_norm_eps=1e-5,
        dropout=0.0,
        initializer_range=0.02,
        byte_embedding_std=1.0,
        pad_token_id=256,
        **kwargs,
    ):
        check_fields(
            positive_ints=dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                               num_latents=num_latents, max_position_embeddings=max_position_embeddings),
            positive_numbers=dict(layer_norm_eps=layer_norm_eps, initializer_range=initializer_range,
                                  byte_embedding_std=byte_embedding_std),
            probabilities=dict(dropout=dropout),
            optional=("intermediate_size",),
        )
        check_token_ids(vocab_size, dict(kwargs, pad_token_id=pad_token_id))
        if vocab_size < 257 or pad_token_id != vocab_size - 1:
            raise ValueError(f"the byte vocabulary is ids 0-255 plus padding as the last id: vocab_size must be >= 257 "
                             f"with pad_token_id = vocab_size - 1, got {vocab_size} and {pad_token_id}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"num_attention_heads ({num_attention_heads}) must divide hidden_size ({hidden_size})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.num_latents = num_latents
        self.max_position_embeddings = max_position_embeddings
        self.decoders = [validated_decoder(entry) for entry in (decoders or [])]
        names = [entry["name"] for entry in self.decoders]
        if len(set(names)) != len(names):
            raise ValueError(f"decoder names must be unique, got {names}")
        self.adapter_scale_init = adapter_scale_init
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.byte_embedding_std = byte_embedding_std
        kwargs["tie_word_embeddings"] = False  # the wire has no output embedding to tie
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def decoder(self, name: str) -> dict:
        for entry in self.decoders:
            if entry["name"] == name:
                return entry
        raise ValueError(f"no decoder named {name!r}; this wire has {[entry['name'] for entry in self.decoders]}")


def validated_decoder(entry: dict) -> dict:
    """A decoder entry with its defaults filled in; unknown or missing fields are refused by name."""
    unknown = set(entry) - set(DECODER_FIELDS)
    if unknown:
        raise ValueError(f"unknown decoder fields {sorted(unknown)}; known: {list(DECODER_FIELDS)}")
    missing = [field for field in ("name", "hidden_size") if entry.get(field) is None]
    if missing:
        raise ValueError(f"decoder entry {entry} lacks {missing}")
    if not str(entry["name"]).isidentifier():
        raise ValueError(f"decoder name must be an identifier (it names the adapter's weights), got {entry['name']!r}")
    check_fields(positive_ints={f"decoders[{entry['name']!r}].hidden_size": entry["hidden_size"]})
    defaults = {"name_or_path": None, "revision": None, "anchor_text": "Answer: ", "bos_after_prefix": False,
                "embedding_rms": None, "anchor_ids": None, "tokenizer_size": None}
    return {**defaults, **entry}


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


__all__ = ["LatentWireConfig"]
