"""Configuration of modded-nanogpt GPTs (Keller Jordan et al., the NanoGPT speedrun).

Reference implementation: KellerJordan/modded-nanogpt, `train_gpt.py@16e2da07` (the "small" `qkv_w` format,
2025-05-30 to 2025-07-14) and `train_gpt_medium.py@06743860` (the "medium" `qkvo_w` format, 2025-04 to 2025-12).
The speedrun changes its architecture from record to record; every choice that differs between the eras hubzoo
reads is a named field here, so that a converted checkpoint states what it is.
"""

import math

from transformers import PretrainedConfig

LOGIT_SOFTCAPS = ("sigmoid", "isru", "none")
ROTARY_CONVENTIONS = ("modded", "hf")
WINDOW_KINDS = ("long", "short")


def small_track_layout(num_layers: int) -> dict:
    """The `train_gpt.py` (2025-05-30 .. 2025-07-14) layout for `num_layers` blocks (12 in every record).

    Value embeddings on the first and last three blocks; U-net skips from block `n/2-1-k` into block `n/2+k`, weighted
    by `scalars[k]`; `scalars` = [skip weights (n, the first n/2 used), block lambdas (2n), value lambdas (2n)]
    (+ padding to the world size, which only a converter sees); no attention in block 7 (at 12 blocks, where the
    record placed it; other depths keep every attention layer); windows long on blocks 0, 4, 7 and the last."""
    half = num_layers // 2
    windows = ["short"] * num_layers
    for layer in (0, 4, 7, num_layers - 1):
        if layer < num_layers:
            windows[layer] = "long"
    return dict(
        value_embedding_layers=_first_and_last_three(num_layers),
        skip_connections=[[half - 1 - k, half + k, k] for k in range(half)],
        block_lambdas_offset=num_layers,
        value_lambdas_offset=3 * num_layers,
        num_scalars=5 * num_layers,
        layers_without_attention=[7] if num_layers == 12 else [],
        attention_windows=windows,
        attention_input_norm=True,
        value_norm=False,
    )


def _first_and_last_three(num_layers: int) -> list:
    """[0, 1, 2, None, ..., None, 0, 1, 2]; models shallower than 6 blocks use them once, on their first blocks."""
    layers = [None] * num_layers
    for index in range(min(3, num_layers)):
        layers[index] = index
        if num_layers >= 6:
            layers[num_layers - 3 + index] = index
    return layers


class ModdedGptConfig(PretrainedConfig):
    r"""
    Configuration for the modded-nanogpt GPT: parameter-free RMSNorm everywhere, embeddings normed into `x0` and
    re-injected into every block (`x = λ0·x + λ1·x0`), QK-normed attention with half-truncated rotary embeddings and
    a constant scale, value embeddings mixed into the values of chosen blocks, U-net skip connections, ReLU² MLPs, an
    untied head with a logit soft-cap, and document-causal attention with block-granular sliding windows.

    The defaults are the 124M small-track model of `train_gpt.py` (2025-05-30 .. 2025-07-14).

    Args:
        vocab_size (`int`, *optional*, defaults to 50304):
            Rows of the embeddings and of the head: the tokenizer's vocabulary padded to a multiple of 128, as every
            record does. Rows at and beyond `tokenizer_vocab_size` exist only for speed.
        tokenizer_vocab_size (`int`, *optional*, defaults to 50257):
            Ids the model accepts (GPT-2's 50257). Logits of the padding rows stay in the softmax of the loss (the
            original's loss includes them) but `generate` never samples them.
        eot_token_id (`int`, *optional*, defaults to 50256):
            The document separator; `documents = cumsum(ids == eot)`, so EOT opens a new document and no token attends
            across documents. `None` turns document masking off.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the residual stream (`model_dim`).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 6):
            Attention heads; `num_attention_heads * head_dim` must equal `hidden_size` (the value embeddings are
            added to the values of every head).
        head_dim (`int`, *optional*, defaults to 128):
            Width of each head (128 in every record; it is not visible in a checkpoint's shapes).
        intermediate_size (`int`, *optional*):
            Width of the ReLU² MLP; defaults to `4 * hidden_size`.
        max_position_embeddings (`int`, *optional*, defaults to 1024):
            Longest sequence the model accepts (length of the rotary tables).
        rotary_base (`float`, *optional*, defaults to 1024.0):
            Frequencies are `(1/rotary_base) ** linspace(0, 1, head_dim/4)` followed by `head_dim/4` zeros: only the
            first quarter of each half of a head rotates.
        rotary_convention (`str`, *optional*, defaults to `"modded"`):
            `"modded"`: `y1 = x1·cos + x2·sin, y2 = -x1·sin + x2·cos` on the two halves (the speedrun's sign);
            `"hf"`: the transformers/Llama `rotate_half` sign (`y1 = x1·cos - x2·sin`).
        attention_scale (`float`, *optional*, defaults to 0.12):
            The constant softmax scale (not `head_dim ** -0.5`).
        attention_input_norm (`bool`, *optional*, defaults to `True`):
            RMS-norm the attention's input (small format); the medium format feeds the raw stream and norms q, k, v.
        value_norm (`bool`, *optional*, defaults to `False`):
            RMS-norm the values per head before mixing in the value embeddings (medium format).
        layers_without_attention (`list[int]`, *optional*):
            Blocks that have only the MLP; defaults to `[7]` at 12 blocks (the record's), none at other depths.
        attention_windows (`list[str]`, *optional*):
            `"long"` or `"short"` per block; defaults to the small-track pattern `[L,S,S,S,L,S,S,L,S,S,S,L]`.
        sliding_window_num_blocks (`int`, *optional*):
            Long windows cover this many `window_block_size`-token blocks, short ones half as many; `None` (default):
            no window. The window is block-granular on absolute positions: key k is visible from query q when
            `k // block >= q // block - (w - 1)`, as the original's block mask.
        window_block_size (`int`, *optional*, defaults to 128):
            Granularity of the sliding windows.
        value_embedding_layers (`list`, *optional*):
            Per block, the index of the value embedding mixed into its values, or `None`; defaults to
            `[0, 1, 2, None, ..., None, 0, 1, 2]`.
        skip_connections (`list[list[int]]`, *optional*):
            `[source, target, scalar_index]` triples: before block `target`, `x += scalars[scalar_index] · out[source]`
            where `out[source]` is block `source`'s output. Default: the small-track U-net.
        num_scalars (`int`, *optional*):
            Length of the `scalars` vector that holds every skip weight and lambda (`5 * num_hidden_layers` by default;
            converted checkpoints keep the padding their distributed training added).
        block_lambdas_offset (`int`, *optional*):
            Block i mixes `x = scalars[o+2i]·x + scalars[o+2i+1]·x0`; default `num_hidden_layers`.
        value_lambdas_offset (`int`, *optional*):
            Block i mixes `v = scalars[o+2i]·v + scalars[o+2i+1]·ve` (only the first term without a value
            embedding); default `3 * num_hidden_layers`.
        logit_softcap (`str`, *optional*, defaults to `"sigmoid"`):
            `"sigmoid"`: `cap · sigmoid(z / temperature)`; `"isru"`: `cap · z / sqrt(z² + cap²)`; `"none"`.
        logit_softcap_cap (`float`, *optional*, defaults to 30.0):
            The cap (30 in the small format, 15 in the medium format).
        logit_softcap_temperature (`float`, *optional*):
            Divisor inside the sigmoid: `7.5 * sqrt(hidden_size)` in 2025-02..07 `train_gpt.py` (the default), 7.5 in
            2025-01 and 2025-08/10. Only for `"sigmoid"`.
        round_head_weight_to_bf16 (`bool`, *optional*, defaults to `False`):
            Round the head weight to bfloat16 where it is used (the medium format keeps an fp32 master weight and
            computes with its bf16 copy; ignoring it moves logits by up to 0.1).
        zero_init_projections (`bool`, *optional*, defaults to `True`):
            Zero-initialise the attention output, MLP output and head weights, as the original. Turn off only to
            exercise gradients at init.
        initializer_range (`float`, *optional*, defaults to 1.0):
            Std of the embeddings' normal init (the original: N(0, 1)). Linear weights use the original's
            `uniform(±sqrt(3) · 0.5 · fan_in^-0.5)`, scaled by `initializer_range`.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Share the head with the input embedding (no record of these eras does).
        bos_token_id (`int`, *optional*):
            Defaults to `eot_token_id`: GPT-2's `<|endoftext|>` both opens and ends a document.
        eos_token_id (`int` or `list[int]`, *optional*):
            Where `generate` stops; defaults to `eot_token_id`.
        pad_token_id (`int`, *optional*, defaults to `None`):
            GPT-2 has no padding token; padded positions are told by `attention_mask`, never by their id.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the causal LM returns its KV cache in eval mode (training never builds one).
    """

    model_type = "modded_gpt"

    def __init__(
        self,
        vocab_size=50304,
        tokenizer_vocab_size=50257,
        eot_token_id=50256,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=6,
        head_dim=128,
        intermediate_size=None,
        max_position_embeddings=1024,
        rotary_base=1024.0,
        rotary_convention="modded",
        attention_scale=0.12,
        attention_input_norm=None,
        value_norm=None,
        layers_without_attention=None,
        attention_windows=None,
        sliding_window_num_blocks=None,
        window_block_size=128,
        value_embedding_layers=None,
        skip_connections=None,
        num_scalars=None,
        block_lambdas_offset=None,
        value_lambdas_offset=None,
        logit_softcap="sigmoid",
        logit_softcap_cap=30.0,
        logit_softcap_temperature=None,
        round_head_weight_to_bf16=False,
        zero_init_projections=True,
        initializer_range=1.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=True,
        **kwargs,
    ):
        check_fields(
            positive_ints=dict(vocab_size=vocab_size, tokenizer_vocab_size=tokenizer_vocab_size,
                               hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                               num_attention_heads=num_attention_heads, head_dim=head_dim,
                               intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                               sliding_window_num_blocks=sliding_window_num_blocks,
                               window_block_size=window_block_size, num_scalars=num_scalars),
            non_negative_ints=dict(block_lambdas_offset=block_lambdas_offset,
                                   value_lambdas_offset=value_lambdas_offset),
            positive_numbers=dict(rotary_base=rotary_base, attention_scale=attention_scale,
                                  logit_softcap_cap=logit_softcap_cap,
                                  logit_softcap_temperature=logit_softcap_temperature,
                                  initializer_range=initializer_range),
            optional=("intermediate_size", "sliding_window_num_blocks", "num_scalars", "block_lambdas_offset",
                      "value_lambdas_offset", "logit_softcap_temperature"),
        )
        # Exports written before these fields existed lack them: they load with the EOT id, as GPT-2's tokenizer has it.
        bos_token_id = eot_token_id if bos_token_id is None else bos_token_id
        eos_token_id = eot_token_id if eos_token_id is None else eos_token_id
        check_token_ids(tokenizer_vocab_size, dict(kwargs, eot_token_id=eot_token_id, bos_token_id=bos_token_id,
                                                   eos_token_id=eos_token_id, pad_token_id=pad_token_id))
        if not isinstance(use_cache, bool):
            raise ValueError(f"config field use_cache must be a bool, got {use_cache!r}")
        layout = small_track_layout(num_hidden_layers)
        given = dict(attention_input_norm=attention_input_norm, value_norm=value_norm,
                     layers_without_attention=layers_without_attention, attention_windows=attention_windows,
                     value_embedding_layers=value_embedding_layers, skip_connections=skip_connections,
                     num_scalars=num_scalars, block_lambdas_offset=block_lambdas_offset,
                     value_lambdas_offset=value_lambdas_offset)
        for key, value in given.items():
            setattr(self, key, layout[key] if value is None else value)
        self.skip_connections = [list(triple) for triple in self.skip_connections]
        self.vocab_size = vocab_size
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.eot_token_id = eot_token_id
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rotary_base = rotary_base
        self.rotary_convention = rotary_convention
        self.attention_scale = attention_scale
        self.sliding_window_num_blocks = sliding_window_num_blocks
        self.window_block_size = window_block_size
        self.logit_softcap = logit_softcap
        self.logit_softcap_cap = logit_softcap_cap
        if logit_softcap_temperature is None and logit_softcap == "sigmoid":
            logit_softcap_temperature = 7.5 * hidden_size ** 0.5
        self.logit_softcap_temperature = logit_softcap_temperature
        self.round_head_weight_to_bf16 = round_head_weight_to_bf16
        self.zero_init_projections = zero_init_projections
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self._validate()
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        # After the base __init__: transformers 4.57's pops these from kwargs and sets them to None otherwise.
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.use_cache = use_cache

    @property
    def num_value_embeddings(self) -> int:
        used = [index for index in self.value_embedding_layers if index is not None]
        return max(used) + 1 if used else 0

    def window_blocks(self, layer: int):
        """The window of block `layer` in `window_block_size` blocks, or None when it has none."""
        if self.sliding_window_num_blocks is None:
            return None
        long = self.sliding_window_num_blocks
        return long if self.attention_windows[layer] == "long" else long // 2

    def _validate(self):
        n = self.num_hidden_layers
        if not 0 < self.tokenizer_vocab_size <= self.vocab_size:
            raise ValueError(f"tokenizer_vocab_size ({self.tokenizer_vocab_size}) must lie in (0, vocab_size="
                             f"{self.vocab_size}]: vocab_size is the padded row count of embeddings and head")
        if self.num_attention_heads * self.head_dim != self.hidden_size:
            raise ValueError(f"num_attention_heads * head_dim ({self.num_attention_heads} * {self.head_dim}) must "
                             f"equal hidden_size ({self.hidden_size}): value embeddings are added to every head's "
                             "values")
        if self.head_dim % 4:
            raise ValueError(f"head_dim ({self.head_dim}) must be divisible by 4 (half-truncated rotary embeddings)")
        if self.rotary_convention not in ROTARY_CONVENTIONS:
            raise ValueError(f"rotary_convention must be one of {ROTARY_CONVENTIONS}, got {self.rotary_convention!r}")
        if self.logit_softcap not in LOGIT_SOFTCAPS:
            raise ValueError(f"logit_softcap must be one of {LOGIT_SOFTCAPS}, got {self.logit_softcap!r}")
        if self.logit_softcap != "none" and not self.logit_softcap_cap > 0:
            raise ValueError(f"logit_softcap_cap must be positive, got {self.logit_softcap_cap}")
        if (self.logit_softcap == "sigmoid") != (self.logit_softcap_temperature is not None):
            raise ValueError("logit_softcap_temperature is set exactly when logit_softcap is 'sigmoid' (got "
                             f"{self.logit_softcap_temperature!r} with {self.logit_softcap!r})")
        if not set(self.layers_without_attention) <= set(range(n)):
            raise ValueError(f"layers_without_attention {self.layers_without_attention} must index blocks 0..{n - 1}")
        if 0 in self.layers_without_attention:
            raise ValueError("block 0 must have attention: the KV cache's length is read from its layer 0, as "
                             "transformers' generate does")
        if len(self.attention_windows) != n or not set(self.attention_windows) <= set(WINDOW_KINDS):
            raise ValueError(f"attention_windows needs one of {WINDOW_KINDS} per block ({n}), got "
                             f"{self.attention_windows}")
        if self.sliding_window_num_blocks is not None and self.sliding_window_num_blocks < 2:
            raise ValueError("sliding_window_num_blocks must be >= 2 (short windows are half as long) or None")
        self._validate_value_embeddings()
        self._validate_scalars()

    def _validate_value_embeddings(self):
        n = self.num_hidden_layers
        if len(self.value_embedding_layers) != n:
            raise ValueError(f"value_embedding_layers needs one entry per block ({n}), got "
                             f"{len(self.value_embedding_layers)}")
        used = {index for index in self.value_embedding_layers if index is not None}
        if used != set(range(len(used))):
            raise ValueError(f"value_embedding_layers must use indices 0..k-1 without gaps, got "
                             f"{self.value_embedding_layers}")
        blind = [layer for layer in self.layers_without_attention if self.value_embedding_layers[layer] is not None]
        if blind:
            raise ValueError(f"blocks {blind} have no attention but a value embedding")

    def _validate_scalars(self):
        n = self.num_hidden_layers
        owners = {}

        def claim(index, owner):
            if not 0 <= index < self.num_scalars:
                raise ValueError(f"{owner} uses scalars[{index}], outside num_scalars={self.num_scalars}")
            if index in owners:
                raise ValueError(f"scalars[{index}] is claimed by both {owners[index]} and {owner}")
            owners[index] = owner

        for source, target, index in self.skip_connections:
            if not 0 <= source < target < n:
                raise ValueError(f"skip connection {[source, target, index]} must go from an earlier to a later block")
            claim(index, f"skip {source}->{target}")
        for layer in range(n):
            for k in range(2):
                claim(self.block_lambdas_offset + 2 * layer + k, f"block {layer} lambdas")
                claim(self.value_lambdas_offset + 2 * layer + k, f"block {layer} value lambdas")


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


__all__ = ["ModdedGptConfig"]
