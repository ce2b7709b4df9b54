"""modded-nanogpt GPTs (the NanoGPT speedrun) as transformers models: trunk, causal LM with KV cache, classifier.

Faithful to `train_gpt.py@16e2da07` (small format) and `train_gpt_medium.py@06743860` (medium format) of
KellerJordan/modded-nanogpt in eval mode; the per-era differences are config fields (see `ModdedGptConfig`). The
original's FlexAttention block mask becomes an explicit boolean mask for SDPA with the same rule: causal, within one
document (`cumsum(ids == eot)`), and a sliding window counted in whole 128-token blocks of absolute position.
Attention goes through transformers' attention interface: `attn_implementation="eager"` (our explicit softmax, which
returns the probabilities for `output_attentions`), `"sdpa"` (the default) with that boolean mask, or
`"flex_attention"` (for compiled training on a GPU), where the same rule becomes a FlexAttention block mask that skips
the blocks no query sees; the KV-cache steps of generation then use SDPA. FlashAttention kernels are not supported:
they take only causal and token-granular sliding masks, not the document and block-granular window masks.
"""

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.logging import get_logger

from .configuration_modded_gpt import ModdedGptConfig


def cache_renamed() -> bool:
    """transformers 5.24 renamed the cache argument `past_key_values` to `cache` (deprecating the old name); older
    releases, 4.57 among them, still pass `past_key_values` from `generate`, where it is not deprecated."""
    return tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (5, 24)


@dataclass
class ModdedGptModelOutput(ModelOutput):
    """`last_hidden_state` is after the final RMSNorm; `hidden_states` are x0 and the output of every block;
    `attentions` one entry per block (None for a block without attention). The KV cache is `cache` (the name
    transformers 5.24 gave it; generation updates the cache object in place, so older releases, which look for
    `past_key_values`, keep using the same object). Layer i of the cache is block i's (never filled for a block
    without attention)."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    cache: Optional[DynamicCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[Optional[torch.FloatTensor], ...]] = None


@dataclass
class ModdedGptCausalLMOutput(ModelOutput):
    """`logits` are soft-capped, float32, over all `vocab_size` rows (the padding rows included, as the original's
    loss); `loss` is the mean next-token cross-entropy over labelled positions."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[DynamicCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[Optional[torch.FloatTensor], ...]] = None


@dataclass
class ModdedGptSequenceClassifierOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[Optional[torch.FloatTensor], ...]] = None


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim, eps = finfo(float32).eps as the original's `F.rms_norm(eps=None)`."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_frequencies(config: ModdedGptConfig, device) -> torch.Tensor:
    """(head_dim/2,) angular frequencies: `(1/base)^linspace(0, 1, head_dim/4)`, then head_dim/4 zeros."""
    quarter = config.head_dim // 4
    frequencies = (1 / config.rotary_base) ** torch.linspace(0, 1, steps=quarter, dtype=torch.float32, device=device)
    return torch.cat([frequencies, frequencies.new_zeros(quarter)])


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, convention: str) -> torch.Tensor:
    """Rotate the two halves of each head of x (B, T, H, D) in float32; cos/sin are (B, T, 1, D/2). The speedrun's
    convention (`"modded"`) has the opposite sin sign to transformers' `rotate_half` (`"hf"`): a rotation by -θ."""
    x1, x2 = x.float().chunk(2, dim=-1)
    if convention == "hf":
        sin = -sin
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def document_ids_of(input_ids: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """Per-token document index: EOT opens a new document (`cumsum(ids == eot)`), as the original's block mask."""
    return (input_ids == eot_token_id).cumsum(dim=-1)


def attention_windows_in_use(config) -> set:
    """The distinct windows (in blocks; None for none) of the layers that attend: one mask is built per window."""
    return {config.window_blocks(layer) for layer in range(config.num_hidden_layers)
            if layer not in config.layers_without_attention}


def attention_masks(config, query_positions, key_positions, query_docs, key_docs, key_valid, past_length,
                    last_position):
    """{window blocks or None: (B, 1, Tq, Tk) boolean mask}, one per distinct window among the attention layers;
    returns None when plain causal attention is exact (SDPA can then use `is_causal`). `last_position` bounds the
    positions (known without reading them), to tell whether a window can bind."""
    batch, query_length = query_positions.shape
    key_length = key_positions.shape[1]
    windows = attention_windows_in_use(config)
    binding = {w for w in windows if w is not None and last_position // config.window_block_size >= w - 1}
    if key_valid is None and query_docs is None and not binding and (query_length == 1 or past_length == 0):
        return None
    device = query_positions.device
    query_index = torch.arange(past_length, past_length + query_length, device=device)
    allowed = (torch.arange(key_length, device=device)[None, :] <= query_index[:, None])[None]
    if query_docs is not None:
        allowed = allowed & (key_docs[:, None, :] == query_docs[:, :, None])
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    # A padding query with no visible key would give NaN: every query sees at least itself.
    allowed = allowed | (query_index[:, None] == torch.arange(key_length, device=device)[None, :])[None]
    masks = {}
    for window in windows:
        mask = allowed
        if window in binding:
            query_block = query_positions // config.window_block_size
            key_block = key_positions // config.window_block_size
            in_window = key_block[:, None, :] >= query_block[:, :, None] - (window - 1)
            mask = mask & (in_window | (query_index[:, None] == torch.arange(key_length, device=device)[None, :]))
        masks[window] = mask[:, None]
    return masks


def flex_block_masks(config, positions, docs, valid):
    """{window blocks or None: BlockMask}: the rule of `attention_masks` for FlexAttention (no cache)."""
    batch, length = positions.shape
    windows = attention_windows_in_use(config)
    masks = {}
    for window in windows:
        masks[window] = create_block_mask(
            _document_window_mask_mod(config, positions, docs, valid, window), batch, None, length, length,
            device=positions.device)
    return masks


def _document_window_mask_mod(config, positions, docs, valid, window):
    """The `mask_mod` of one window. A closure over its arguments, not a default argument: dynamo (torch 2.13) cannot
    trace `create_block_mask` reading a mask function's `__defaults__`."""

    def mask_mod(b, h, q, k):
        allowed = k <= q
        if docs is not None:
            allowed = allowed & (docs[b, k] == docs[b, q])
        if valid is not None:
            allowed = allowed & valid[b, k]
        if window is not None:
            block = config.window_block_size
            allowed = allowed & (positions[b, k] // block >= positions[b, q] // block - (window - 1))
        return allowed | (k == q)

    return mask_mod


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The explicit softmax attention: query, key, value (B, H, T, D); `attention_mask` a boolean (B, 1, Tq, Tk)
    mask (True: visible) or None for plain causal attention. Returns the output (B, Tq, H, D), as transformers'
    attention functions, and the probabilities (B, H, Tq, Tk)."""
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    if attention_mask is None and query.shape[-2] > 1:
        attention_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool,
                                    device=query.device).tril(key.shape[-2] - query.shape[-2])
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probabilities = scores.softmax(dim=-1).type_as(query)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities


class ModdedGptAttention(nn.Module):
    """QK-normed, half-truncated rotary self-attention with a constant scale; fused QKV (`qkv_w` of the original,
    rows Q, K, V) and a value-embedding mix `v = λ0·v + λ1·ve`."""

    is_causal = True

    def __init__(self, config: ModdedGptConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # its layer of the KV cache: the block's index
        inner = config.num_attention_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        self.o_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self.o_proj.is_output_projection = True

    def forward(self, x, value_embedding, value_lambdas, cos, sin, mask, cache, output_attentions=False):
        batch, length, _ = x.shape
        heads, head_dim = self.config.num_attention_heads, self.config.head_dim
        q, k, v = self.qkv_proj(x).view(batch, length, 3 * heads, head_dim).chunk(3, dim=-2)
        q = apply_rotary(rms_norm(q), cos, sin, self.config.rotary_convention)
        k = apply_rotary(rms_norm(k), cos, sin, self.config.rotary_convention)
        if self.config.value_norm:
            v = rms_norm(v)
        v = value_lambdas[0] * v
        if value_embedding is not None:  # in v's dtype: under autocast the embedding is fp32, v bf16
            v = v + value_lambdas[1] * value_embedding.view_as(v).type_as(v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y, probabilities = self.attention_function(output_attentions, mask)(
            self, q, k, v.type_as(q), mask, scaling=self.config.attention_scale, dropout=0.0)
        y = self.o_proj(y.reshape(batch, length, heads * head_dim))
        return y, probabilities

    def attention_function(self, output_attentions, mask):
        implementation = self.config._attn_implementation
        if output_attentions and implementation not in (None, "eager"):
            # Only the explicit softmax has the probabilities; transformers' other kernels return None for them.
            get_logger(__name__).warning_once(f"output_attentions=True needs the eager attention: using it instead "
                                              f"of {implementation!r} for this call")
            implementation = "eager"
        elif implementation == "flex_attention" and not isinstance(mask, BlockMask):
            implementation = "sdpa"  # flex builds a block mask only without a cache; cached steps use SDPA
        if implementation in (None, "eager"):
            return eager_attention_forward
        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5: also refuses an unknown name
            return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        return ALL_ATTENTION_FUNCTIONS[implementation]


class ModdedGptMLP(nn.Module):
    def __init__(self, config: ModdedGptConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_output_projection = True

    def forward(self, x):
        return self.down_proj(F.relu(self.up_proj(x)).square())


class ModdedGptBlock(GradientCheckpointingLayer):
    """x = λ0·x + λ1·x0, then attention (unless the block has none) and the MLP. Returns (x, attention
    probabilities or None). Tensors that need gradients come positionally (the reentrant checkpoint's rule)."""

    def __init__(self, config: ModdedGptConfig, layer: int):
        super().__init__()
        self.config = config
        self.layer = layer
        has_attention = layer not in config.layers_without_attention
        self.attn = ModdedGptAttention(config, layer) if has_attention else None
        self.mlp = ModdedGptMLP(config)

    def forward(self, x, x0, value_embedding, scalars, cos, sin, masks=None, cache=None, output_attentions=False):
        block = self.config.block_lambdas_offset + 2 * self.layer
        x = scalars[block] * x + scalars[block + 1] * x0
        probabilities = None
        if self.attn is not None:
            value = self.config.value_lambdas_offset + 2 * self.layer
            attn_input = rms_norm(x) if self.config.attention_input_norm else x
            mask = None if masks is None else masks[self.config.window_blocks(self.layer)]
            y, probabilities = self.attn(attn_input, value_embedding, scalars[value:value + 2], cos, sin, mask, cache,
                                         output_attentions)
            x = x + y
        return x + self.mlp(rms_norm(x)), probabilities


class PaddingRowsSuppressor(LogitsProcessor):
    """Gives the padding rows of the head (ids >= the tokenizer's vocabulary) a score of -inf."""

    def __init__(self, first_padding_id: int):
        self.first_padding_id = first_padding_id

    def __call__(self, input_ids, scores):
        # Not in place: `generate` keeps the same tensor as the raw logits it returns (output_logits=True).
        padding = torch.arange(scores.shape[-1], device=scores.device) >= self.first_padding_id
        return scores.masked_fill(padding, float("-inf"))


class ModdedGptPreTrainedModel(PreTrainedModel):
    config_class = ModdedGptConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ModdedGptBlock"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The masks are document- and block-window-shaped booleans, which the FlashAttention kernels cannot take.
    _supports_flash_attn = False
    # Range checks of ids read tensor values: on an accelerator each is a host-device sync; trainers that checked the
    # batch on the CPU turn them off (modeling.device_value_checks).
    check_values_on_device = True

    # Copied from modeling.ltg_bert.modeling_ltg_bert.LtgBertPreTrainedModel._values_checked
    def _values_checked(self, tensor: torch.Tensor) -> bool:
        """Whether the checks that read `tensor`'s values run: in eager mode on the CPU, and on an accelerator unless
        `check_values_on_device` is off."""
        if torch.compiler.is_compiling():  # torch.compile / torch.export trace fake tensors; eager keeps the checks
            return False
        return tensor.device.type == "cpu" or self.check_values_on_device

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """transformers' resize of the embeddings and head, plus the value-embedding tables (same rows, so the saved
        folder reloads) and `tokenizer_vocab_size`: `new_num_tokens` is the tokenizer's new length, so exactly its
        ids are accepted; rows added by `pad_to_multiple_of` are padding, as in the original's padded vocabulary."""
        config = self.config
        if new_num_tokens is not None:
            special = {name: getattr(config, name) for name in ("eot_token_id", "bos_token_id", "eos_token_id",
                                                                "pad_token_id")}
            ids = [(name, i) for name, value in special.items() if value is not None
                   for i in (value if isinstance(value, (list, tuple)) else [value])]
            rows = self.get_input_embeddings().num_embeddings
            cut = [f"{name}={i}" for name, i in ids if new_num_tokens <= i < rows]
            if cut:
                raise ValueError(f"cannot resize to {new_num_tokens} tokens: it would cut {', '.join(cut)} out of "
                                 "the vocabulary; change those config fields first")
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        trunk = self.base_model
        for index, table in enumerate(trunk.value_embeddings):
            trunk.value_embeddings[index] = self._get_resized_embeddings(table, embeddings.num_embeddings,
                                                                          mean_resizing=mean_resizing)
        config.vocab_size = embeddings.num_embeddings
        if new_num_tokens is not None:
            config.tokenizer_vocab_size = new_num_tokens
        return embeddings

    @torch.no_grad()
    def _init_weights(self, module):
        """The original's init: embeddings N(0, 1), linear weights uniform(±√3·0.5·fan_in^-½), output projections
        and head zero (`zero_init_projections`), `scalars` = skip weights 1, block lambdas (1, 0), value lambdas
        (0.5, 0.5); `initializer_range` scales the random parts."""
        config = self.config
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=config.initializer_range)
        elif isinstance(module, nn.Linear):
            if config.zero_init_projections and getattr(module, "is_output_projection", False):
                nn.init.zeros_(module.weight)
            else:
                bound = 3 ** 0.5 * 0.5 * module.in_features ** -0.5 * config.initializer_range
                nn.init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, ModdedGptModel):
            init_scalars(module.scalars, config)


def init_scalars(scalars: torch.Tensor, config: ModdedGptConfig) -> None:
    nn.init.ones_(scalars)
    for layer in range(config.num_hidden_layers):
        block, value = config.block_lambdas_offset + 2 * layer, config.value_lambdas_offset + 2 * layer
        nn.init.zeros_(scalars[block + 1:block + 2])
        nn.init.constant_(scalars[value:value + 2], 0.5)


# Copied from modeling.backpack.modeling_backpack.check_inputs with config.vocab_size->config.tokenizer_vocab_size
def check_inputs(input_ids, inputs_embeds, attention_mask, past_length, config, check_values):
    """The tokens (exactly one of `input_ids` (B, T) and `inputs_embeds` (B, T, d)), their mask and their length."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None and (input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32)):
        raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq_len), got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    if inputs_embeds is not None and (inputs_embeds.dim() != 3 or not inputs_embeds.is_floating_point() or
                                      inputs_embeds.shape[-1] != config.hidden_size):
        raise ValueError(f"inputs_embeds must be a float tensor of shape (batch, seq_len, hidden_size="
                         f"{config.hidden_size}), got {inputs_embeds.dtype} {tuple(inputs_embeds.shape)}")
    tokens = input_ids if input_ids is not None else inputs_embeds[..., 0]
    if tokens.numel() == 0:
        name = "input_ids" if input_ids is not None else "inputs_embeds"
        raise ValueError(f"{name} is empty (shape {tuple(tokens.shape)}): a batch needs at least one sequence of at "
                         "least one token")
    total = past_length + tokens.shape[1]
    if total > config.max_position_embeddings:
        raise ValueError(f"Sequence length {total} (cached {past_length} + new {tokens.shape[1]}) exceeds "
                         f"max_position_embeddings ({config.max_position_embeddings})")
    if attention_mask is not None and attention_mask.shape != (tokens.shape[0], total):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must be (batch, cached + new tokens) = "
                         f"{(tokens.shape[0], total)}")
    if check_values and input_ids is not None:
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one host-device sync, not two
        if low < 0 or high >= config.tokenizer_vocab_size:
            raise ValueError(f"input_ids contain ids outside [0, {config.tokenizer_vocab_size}) (min {low}, max "
                             f"{high}): the tokenizer does not match this model's vocabulary "
                             "(config.tokenizer_vocab_size)")
    if attention_mask is not None and check_values and not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError("attention_mask has a row of zeros: that sequence has no real token to attend to")
    return tokens


# Copied from modeling.backpack.modeling_backpack[shared position checks]
# ---- shared position checks (begin): copied from modeling_backpack.py into modeling_modded_gpt.py (checked by
# utils/check_copies.py); each exported modeling file must stand alone. ----


def check_position_ids(position_ids: torch.Tensor, input_ids: torch.Tensor, max_positions: int, check_values: bool):
    """Given `position_ids`: integers, (batch or 1, new tokens), each in [0, max_position_embeddings)."""
    batch, length = input_ids.shape
    if position_ids.dtype not in (torch.int64, torch.int32) or position_ids.dim() != 2 or \
            position_ids.shape[1] != length or position_ids.shape[0] not in (1, batch):
        raise ValueError(f"position_ids must be an integer tensor of shape ({batch} or 1, {length}), got "
                         f"{position_ids.dtype} {tuple(position_ids.shape)}")
    if check_values:
        low, high = torch.stack(torch.aminmax(position_ids)).tolist()  # one host-device sync, not two
        if low < 0 or high >= max_positions:
            raise ValueError(f"position_ids must lie in [0, max_position_embeddings={max_positions}), got min {low}, "
                             f"max {high}")


# ---- shared position checks (end) ----


def resolve_cache_argument(cache, past_key_values):
    """The cache under either name; `past_key_values` warns where transformers has renamed it (>= 5.24)."""
    if past_key_values is None:
        return cache
    if cache is not None:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    if cache_renamed():
        warnings.warn("`past_key_values` is deprecated for ModdedGpt (transformers >= 5.24 names it `cache`). Use "
                      "`cache` instead.", FutureWarning, stacklevel=3)
    return past_key_values


class ModdedGptModel(ModdedGptPreTrainedModel):
    """Embeddings, value embeddings, the blocks with their skip connections, and the final RMSNorm."""

    def __init__(self, config: ModdedGptConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.value_embeddings = nn.ModuleList(nn.Embedding(config.vocab_size, config.hidden_size)
                                              for _ in range(config.num_value_embeddings))
        self.layers = nn.ModuleList(ModdedGptBlock(config, layer) for layer in range(config.num_hidden_layers))
        # Every skip weight and lambda in one vector, laid out as the original's `scalars` (see the config).
        self.scalars = nn.Parameter(torch.empty(config.num_scalars))
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable; the blocks checkpoint themselves
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        cache: Optional[DynamicCache] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        past_key_values: Optional[DynamicCache] = None,
    ):
        """`attention_mask` (B, cached + new): 1 for real tokens; padding is never attended. `position_ids` default to
        the count of real tokens before each one (so left and right padding agree). `document_ids` (B, cached + new)
        are needed only to continue a cache whose past holds an EOT; by default they come from the EOT tokens of
        `input_ids`. `cache` (`past_key_values` before transformers 5.24): a `DynamicCache` to extend; layer i is
        block i's (positions in it follow from its length, so there is no `cache_position`).

        `inputs_embeds` is accepted only as None (the keyword PEFT's wrappers always pass): the value embeddings and
        the document mask are functions of the token ids, so embeddings alone do not determine the output."""
        config = self.config
        cache = resolve_cache_argument(cache, past_key_values)
        if inputs_embeds is not None:
            raise ValueError("ModdedGpt needs input_ids and cannot take inputs_embeds: its value embeddings and its "
                             "document mask are looked up from the token ids, which embeddings do not determine")
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(f"ModdedGpt supports only a DynamicCache (got {type(cache).__name__}): its document and "
                             "window masks are built against the cached keys, which a static cache pads")
        use_cache = (config.use_cache and not self.training) if use_cache is None else use_cache
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpointing and (use_cache or cache is not None):
            # The backward replay of a block would append its keys to the cache a second time.
            get_logger(__name__).warning_once("use_cache=True is incompatible with gradient checkpointing: not using "
                                              "the cache")
            use_cache, cache = False, None
        if use_cache and cache is None:
            cache = DynamicCache(config=config)  # one layer per block, as generate builds it
        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(input_ids, None, attention_mask, past_length, config, self._values_checked(input_ids))
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        query_positions, key_positions = self._positions(input_ids, attention_mask, position_ids, past_length)
        key_docs = self._documents(input_ids, document_ids, past_length)
        query_docs = None if key_docs is None else key_docs[:, past_length:]
        key_valid = None if attention_mask is None else attention_mask.bool()
        if config._attn_implementation == "flex_attention" and past_length == 0 and not output_attentions:
            masks = flex_block_masks(config, key_positions, key_docs, key_valid)
        else:
            # Default positions never exceed the index; given ones are only bounded by the rotary tables.
            last_position = (past_length + input_ids.shape[1] - 1 if position_ids is None
                             else config.max_position_embeddings - 1)
            masks = attention_masks(config, query_positions, key_positions, query_docs, key_docs, key_valid,
                                    past_length, last_position)
        angles = query_positions[..., None].float() * rotary_frequencies(config, input_ids.device)
        cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]

        x = x0 = rms_norm(self.embed_tokens(input_ids))
        value_embeddings = [embedding(input_ids) for embedding in self.value_embeddings]
        skip_sources = {source for source, _, _ in config.skip_connections}
        outputs, all_hidden = {}, (x0,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer, block in enumerate(self.layers):
            for source, target, index in config.skip_connections:
                if target == layer:
                    x = x + self.scalars[index] * outputs[source]
            ve_index = config.value_embedding_layers[layer]
            ve = None if ve_index is None else value_embeddings[ve_index]
            x, probabilities = block(x, x0, ve, self.scalars, cos, sin, masks=masks, cache=cache,
                                     output_attentions=output_attentions)
            if layer in skip_sources:
                outputs[layer] = x
            if output_hidden_states:
                all_hidden = all_hidden + (x,)
            if output_attentions:
                all_attentions = all_attentions + (probabilities,)
        output = ModdedGptModelOutput(last_hidden_state=rms_norm(x), cache=cache if use_cache else None,
                                      hidden_states=all_hidden, attentions=all_attentions)
        return output if return_dict in (None, True) else output.to_tuple()

    def _positions(self, input_ids, attention_mask, position_ids, past_length):
        """(query positions (B, T), key positions (B, cached + T)): absolute positions in the packed sequence."""
        batch, length = input_ids.shape
        device = input_ids.device
        if attention_mask is not None:
            keys = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        else:
            keys = torch.arange(past_length + length, device=device).expand(batch, -1)
        if position_ids is not None:
            check_position_ids(position_ids, input_ids, self.config.max_position_embeddings,
                               self._values_checked(position_ids))
            keys = torch.cat([keys[:, :past_length], position_ids.to(device).expand(batch, -1)], dim=1)
        return keys[:, past_length:], keys

    def _documents(self, input_ids, document_ids, past_length):
        eot = self.config.eot_token_id
        if eot is None:
            return None
        if document_ids is None:
            if past_length:
                raise ValueError("document masking over a cache needs document_ids for the cached and new tokens "
                                 "(`generate` passes them); or set config.eot_token_id = None")
            return document_ids_of(input_ids, eot)
        if document_ids.shape != (input_ids.shape[0], past_length + input_ids.shape[1]):
            raise ValueError(f"document_ids shape {tuple(document_ids.shape)} must be (batch, cached + new tokens)")
        return document_ids.to(input_ids.device)


class ModdedGptHead(nn.Linear):
    """The output projection. Its weight meets the hidden states in their dtype, rounded to bfloat16 first when
    `round_to_bf16` (the medium record keeps an fp32 head and rounds it at use). A module rather than a bare weight
    read, so that accelerate's offload hooks (`device_map` with CPU or disk offload) place the weight before use."""

    round_to_bf16 = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight.bfloat16() if self.round_to_bf16 else self.weight
        return F.linear(hidden, weight.type_as(hidden))


class ModdedGptForCausalLM(ModdedGptPreTrainedModel, GenerationMixin):
    """The trunk and its soft-capped head. `generate` works with the KV cache and never samples padding rows."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ModdedGptConfig):
        super().__init__(config)
        self.model = ModdedGptModel(config)
        self.set_output_embeddings(nn.Linear(config.hidden_size, config.vocab_size, bias=False))
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        # transformers' resizing hands over a plain nn.Linear: made our head in place (ModdedGptHead adds no state),
        # it keeps its weight and the marks that tell post_init it is already initialised
        if type(new_embeddings) is nn.Linear:
            new_embeddings.__class__ = ModdedGptHead
        if not isinstance(new_embeddings, ModdedGptHead):
            raise TypeError(f"the output embeddings must be an nn.Linear, got {type(new_embeddings).__name__}")
        new_embeddings.round_to_bf16 = self.config.round_head_weight_to_bf16
        new_embeddings.is_output_projection = not self.config.tie_word_embeddings  # tied: the embedding's init stands
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        document_ids: Optional[torch.Tensor] = None,
        cache: Optional[DynamicCache] = None,
        use_cache: Optional[bool] = None,
        labels: Optional[torch.Tensor] = None,
        shift_labels: Optional[torch.Tensor] = None,
        num_items_in_batch: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        past_key_values: Optional[DynamicCache] = None,
    ):
        """`labels` (B, T) are the input ids with `ignore_index` where no loss is wanted (padding): the model shifts
        them once, position t predicts labels[t + 1]. `shift_labels` (B, T) are labels already shifted (position t
        predicts shift_labels[t], as Trainer passes them under context parallelism); when given they are the targets
        and `labels` is not read, as in transformers' causal LM loss. The loss is the mean cross-entropy over labelled
        positions, or their sum / `num_items_in_batch`."""
        outputs = self.model(input_ids, attention_mask, position_ids, document_ids, cache=cache, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, inputs_embeds=inputs_embeds, past_key_values=past_key_values)
        logits = self.capped_logits(outputs.last_hidden_state)
        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.next_token_loss(logits, labels, num_items_in_batch, shift_labels=shift_labels,
                                        ignore_index=ignore_index)
        output = ModdedGptCausalLMOutput(loss=loss, logits=logits, cache=outputs.cache,
                                         hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output if return_dict in (None, True) else output.to_tuple()

    def capped_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        cap = self.config.logit_softcap_cap
        if self.config.logit_softcap == "sigmoid":
            return cap * torch.sigmoid(logits / self.config.logit_softcap_temperature)
        if self.config.logit_softcap == "isru":
            return cap * logits * torch.rsqrt(logits.square() + cap * cap)
        return logits

    def next_token_loss(self, logits: torch.Tensor, labels: Optional[torch.Tensor], num_items_in_batch=None,
                        shift_labels: Optional[torch.Tensor] = None, ignore_index: int = -100) -> torch.Tensor:
        """Cross-entropy of position t against shift_labels[t], else labels[t + 1], over all head rows, ignoring
        `ignore_index`: the mean over the labelled targets, or their sum / `num_items_in_batch` when given (Trainer's
        gradient-accumulation contract; 1 gives the sum). The labels are shifted, not the logits, so the
        (B, T, vocab) logits are never copied."""
        given, name = (labels, "labels") if shift_labels is None else (shift_labels, "shift_labels")
        if given.shape != logits.shape[:2]:
            raise ValueError(f"{name} shape {tuple(given.shape)} must match input_ids {tuple(logits.shape[:2])}")
        targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index) if shift_labels is None else shift_labels
        targets = targets.to(logits.device)
        if self._values_checked(targets):
            bad = (targets != ignore_index) & ((targets < 0) | (targets >= self.config.tokenizer_vocab_size))
            if bad.any():
                raise ValueError(f"{name} hold ids outside [0, {self.config.tokenizer_vocab_size}) that are not "
                                 f"ignore_index ({ignore_index})")
        if num_items_in_batch is None:
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index, reduction="sum")
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """As transformers', plus the document ids of the whole sequence so far (the cache holds only keys), less
        `cache_position` (transformers 4.57 adds it; the cache's length already says where the new tokens go)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        inputs.pop("cache_position", None)
        if self.config.eot_token_id is not None:
            inputs["document_ids"] = document_ids_of(input_ids, self.config.eot_token_id)
        return inputs

    def generate(self, *args, logits_processor=None, **kwargs):
        """transformers' `generate`, with the padding rows of the head (ids >= tokenizer_vocab_size) never chosen.
        Only the dynamic cache is supported (refused before any work otherwise): the document and window masks are
        built against the keys actually cached, which a static cache pads to its full length."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("ModdedGpt generates from input_ids only: its value embeddings and its document mask are "
                             "looked up from the token ids, which inputs_embeds do not determine")
        generation_config = kwargs.get("generation_config") or self.generation_config
        implementation = kwargs.get("cache_implementation", getattr(generation_config, "cache_implementation", None))
        given_cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if implementation not in (None, "dynamic") or (given_cache is not None and
                                                        not isinstance(given_cache, DynamicCache)):
            raise ValueError(f"ModdedGpt generates only with the dynamic cache (got cache_implementation="
                             f"{implementation!r}, cache {type(given_cache).__name__}): its document and window "
                             "masks are built against the keys actually cached, which a static cache pads; leave "
                             "cache_implementation unset")
        processors = LogitsProcessorList(logits_processor or [])
        if self.config.tokenizer_vocab_size < self.config.vocab_size:
            processors.append(PaddingRowsSuppressor(self.config.tokenizer_vocab_size))
        return super().generate(*args, logits_processor=processors, **kwargs)


class ModdedGptForSequenceClassification(ModdedGptPreTrainedModel):
    """A linear classifier on the final (normed) state of the last real token of each sequence."""

    def __init__(self, config: ModdedGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ModdedGptModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
    ):
        """Padding may be on either side: the pooled position is the last one whose `attention_mask` is 1.
        `inputs_embeds` only as None, as in `ModdedGptModel`."""
        outputs = self.model(input_ids, attention_mask, position_ids, use_cache=False,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, inputs_embeds=inputs_embeds)
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
        else:
            index = torch.arange(hidden.shape[1], device=hidden.device)
            last = (attention_mask.bool() * index).argmax(dim=-1)
        logits = self.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).float()
        loss = None if labels is None else self.classification_loss(logits, labels)
        output = ModdedGptSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                                   attentions=outputs.attentions)
        return output if return_dict in (None, True) else output.to_tuple()

    def classification_loss(self, logits, labels):
        if labels.dim() == 0 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels shape {tuple(labels.shape)} must start with the batch size {logits.shape[0]}")
        problem = self.config.problem_type
        if problem is None:
            problem = "regression" if self.num_labels == 1 else (
                "single_label_classification" if labels.dtype in (torch.long, torch.int) else
                "multi_label_classification")
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1)) if self.num_labels == 1 else \
                F.mse_loss(logits, labels.float())
        if problem == "single_label_classification":
            if self._values_checked(labels) and ((labels < 0) | (labels >= self.num_labels)).any():
                raise ValueError(f"labels must lie in [0, num_labels={self.num_labels})")
            return F.cross_entropy(logits, labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.float())


__all__ = [
    "ModdedGptPreTrainedModel",
    "ModdedGptModel",
    "ModdedGptForCausalLM",
    "ModdedGptForSequenceClassification",
]
