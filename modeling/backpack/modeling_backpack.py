"""Backpack language models as transformers models: trunk (senses, contextualizer, sense weights) and causal LM.

Faithful in eval mode to `stanfordnlp/backpack-gpt2` (sense network "stanford") and to
`SwordElucidator/nanoBackpackLM@9d1e2a0` (sense network "nano"). Unlike both originals, `attention_mask` is honoured in
the contextualizer and in the sense weights α (padding is never a source), positions count real tokens (left and right
padding agree), there is a loss and a KV cache for `generate`. Canonical layouts: linear weights are (out, in) and
sense vectors are sense-major (B, k, T, d); the converters permute the originals' layouts into these.
"""

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.logging import get_logger

from .configuration_backpack import BackpackConfig


@dataclass
class BackpackModelOutput(ModelOutput):
    """`last_hidden_state`: Σ_senses α @ senses (the head's input). `senses`: (B, k, T, d) sense vectors of the new
    tokens. `contextualization`: α (B, k, T_new, T_all), rows sum to 1 over the visible positions.
    `contextual_hidden_state`: the contextualizer's output (after its final LayerNorm). `cache`: the KV cache (the
    contextualizer's layers, then one layer holding α's keys and the sense vectors). `hidden_states`: the
    contextualizer's input and the output of each of its blocks. `attentions`: each block's attention probabilities
    (B, heads, T_new, T_all), with `output_attentions=True` on the eager attention."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    senses: Optional[torch.FloatTensor] = None
    contextualization: Optional[torch.FloatTensor] = None
    contextual_hidden_state: Optional[torch.FloatTensor] = None
    cache: Optional[DynamicCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[torch.FloatTensor, ...]] = None


@dataclass
class BackpackCausalLMOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    senses: Optional[torch.FloatTensor] = None
    contextualization: Optional[torch.FloatTensor] = None
    cache: Optional[DynamicCache] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[torch.FloatTensor, ...]] = None


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if name == "gelu_new" else "none")


class BackpackMLP(nn.Module):
    def __init__(self, config: BackpackConfig, hidden: int, out: int):
        super().__init__()
        self.act = config.hidden_act
        self.up_proj = nn.Linear(config.hidden_size, hidden, bias=config.use_bias)
        self.down_proj = nn.Linear(hidden, out, bias=config.use_bias)

    def forward(self, x):
        return self.down_proj(activation(self.up_proj(x), self.act))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Explicit softmax attention, the `eager` entry of the attention interface: (output (B, Tq, heads, head_dim),
    probabilities (B, heads, Tq, Tk)). `attention_mask` is additive (0 or a large negative), (B or 1, 1, Tq, Tk)."""
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = torch.softmax(scores.float(), dim=-1).type_as(query)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)
    return (probabilities @ value).transpose(1, 2).contiguous(), probabilities


class BackpackAttention(nn.Module):
    """GPT-2 causal self-attention (fused QKV, rows q | k | v), with its inverse-layer-index scaling as an option,
    through transformers' attention interface (`config._attn_implementation`: eager, sdpa, flex_attention)."""

    is_causal = True

    def __init__(self, config: BackpackConfig, layer: int):
        super().__init__()
        self.config = config
        self.layer, self.heads = layer, config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        divisor = self.head_dim ** 0.5 * ((layer + 1) if config.scale_attn_by_inverse_layer_idx else 1)
        self.scale = 1.0 / divisor
        self.dropout = config.dropout
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.use_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)

    def forward(self, x, mask, cache, output_attentions=False):
        """`mask`: additive (B, 1, Tq, Tk), or None for plain causal attention (sdpa only). Returns the output and the
        attention probabilities (None unless eager; `output_attentions` asks for the eager attention)."""
        batch, length, width = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        # transformers 5 validates the name through `get_interface`; 4.57 has only the mapping. Both spellings are
        # also what each release looks for in this file to let `attn_implementation` be chosen at load time.
        if output_attentions or self.config._attn_implementation in (None, "eager"):
            attend = eager_attention_forward
        elif hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        else:
            attend = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        y, probabilities = attend(self, q, k, v, mask, dropout=self.dropout if self.training else 0.0,
                                  scaling=self.scale)
        return self.o_proj(y.reshape(batch, length, width)), probabilities


class BackpackBlock(GradientCheckpointingLayer):
    """A pre-LayerNorm GPT-2 block of the contextualizer; gradient checkpointing is transformers' (the layer
    checkpoints itself once `gradient_checkpointing_enable` picked it)."""

    def __init__(self, config: BackpackConfig, layer: int):
        super().__init__()
        eps, bias = config.layer_norm_eps, config.use_bias
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=eps, bias=bias)
        self.attn = BackpackAttention(config, layer)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=eps, bias=bias)
        self.mlp = BackpackMLP(config, config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask=None, cache=None, output_attentions=False):
        attended, probabilities = self.attn(self.attn_norm(x), mask, cache, output_attentions)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), probabilities


class StanfordSenseNetwork(nn.Module):
    """backpack-gpt2: `r = LN(e) + e; h = LN_1(r); r = r + MLP(h); senses = MLP_out(LN_2(r))`."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        d, eps, bias = config.hidden_size, config.layer_norm_eps, config.use_bias
        self.input_norm = nn.LayerNorm(d, eps=eps, bias=bias)
        self.block_norm_1 = nn.LayerNorm(d, eps=eps, bias=bias)
        self.block_mlp = BackpackMLP(config, config.intermediate_size, d)
        self.block_norm_2 = nn.LayerNorm(d, eps=eps, bias=bias)
        self.output_mlp = BackpackMLP(config, config.sense_intermediate_size, config.num_senses * d)

    def forward(self, embeddings):
        residual = self.input_norm(embeddings) + embeddings
        residual = residual + self.block_mlp(self.block_norm_1(residual))
        return self.output_mlp(self.block_norm_2(residual))


class NanoSenseNetwork(nn.Module):
    """nanoBackpackLM: `x = LN_1(e + MLP_1(e)); senses = LN_2(x + MLP_2(x))`, x added to every sense and `LN_2` taken
    over all k·d values of a token at once (sense-major here; the original's order is d-major)."""

    def __init__(self, config: BackpackConfig):
        super().__init__()
        d, eps, bias = config.hidden_size, config.layer_norm_eps, config.use_bias
        self.num_senses = config.num_senses
        self.mlp_1 = BackpackMLP(config, config.intermediate_size, d)
        self.norm_1 = nn.LayerNorm(d, eps=eps, bias=bias)
        self.mlp_2 = BackpackMLP(config, config.sense_intermediate_size, config.num_senses * d)
        self.norm_2 = nn.LayerNorm(config.num_senses * d, eps=eps, bias=bias)

    def forward(self, embeddings):
        x = self.norm_1(embeddings + self.mlp_1(embeddings))
        senses = self.mlp_2(x).unflatten(-1, (self.num_senses, -1)) + x[..., None, :]
        return self.norm_2(senses.flatten(-2))


SENSE_NETWORK_CLASSES = {"stanford": StanfordSenseNetwork, "nano": NanoSenseNetwork}


class BackpackPreTrainedModel(PreTrainedModel):
    """The contextualizer's attention goes through transformers' attention interface (eager, sdpa, flex_attention;
    `output_attentions=True` computes that call eagerly). The sense weights α are an explicit softmax whatever the
    implementation: α itself is an output of the model (`contextualization`) and can be replaced by the caller, so it
    must exist as a tensor; no fused kernel returns it."""

    config_class = BackpackConfig
    base_model_prefix = "backpack"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BackpackBlock"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
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

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2's init: normal(0, initializer_range) weights, zero biases, unit LayerNorm gains."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


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
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f"input_ids contain ids outside [0, {config.vocab_size}) (min {low}, max "
                             f"{high}): the tokenizer does not match this model's vocabulary "
                             "(config.vocab_size)")
    if attention_mask is not None and check_values and not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError("attention_mask has a row of zeros: that sequence has no real token to attend to")
    return tokens


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


def causal_mask(attention_mask, query_length, past_length, device, explicit=False):
    """(B or 1, 1, Tq, Tk) boolean mask (causal, padding never a key, every query sees itself), or None for plain
    causal attention without a cache prefix unless `explicit`."""
    if not explicit and attention_mask is None and (past_length == 0 or query_length == 1):
        return None
    key_length = past_length + query_length
    query_index = torch.arange(past_length, key_length, device=device)[:, None]
    key_index = torch.arange(key_length, device=device)[None, :]
    allowed = (key_index <= query_index)[None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    return (allowed | (key_index == query_index))[:, None]


def additive_mask(mask, batch: int, dtype) -> torch.Tensor:
    """The boolean mask as the additive float mask eager and sdpa take, (B, 1, Tq, Tk)."""
    blocked = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return blocked.expand(batch, *blocked.shape[1:])


def flex_block_mask(attention_mask, batch: int, query_length: int, past_length: int, device):
    """The causal + padding mask as the `BlockMask` flex_attention takes. A dense tensor mask would be read by the
    score function at the block-padded indices too (out of bounds: memory corruption on CPU), so the padding row is
    padded to whole blocks here and everything else is index arithmetic."""
    from torch.nn.attention.flex_attention import create_block_mask

    block = 128  # flex_attention's default block size, also passed to create_block_mask below
    key_length = past_length + query_length
    real = torch.ones(batch, key_length, dtype=torch.bool, device=device) if attention_mask is None \
        else attention_mask.bool()
    real = F.pad(real, (0, -key_length % block + block))

    def visible(batch_index, head_index, query_index, key_index):
        position = query_index + past_length
        return ((key_index <= position) & real[batch_index, key_index]) | (key_index == position)

    return create_block_mask(visible, batch, None, query_length, key_length, device=device, BLOCK_SIZE=block)


# Copied from modeling.modded_gpt.modeling_modded_gpt.cache_renamed
def cache_renamed() -> bool:
    """transformers 5.24 renamed the cache argument `past_key_values` to `cache` (deprecating the old name); older
    releases, 4.57 among them, still pass `past_key_values` from `generate`, where it is not deprecated."""
    return tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (5, 24)


def ensure_cache_layer(cache, index: int) -> None:
    """Give a cache built for the contextualizer's layers (as `generate` builds it from the config) the extra layer
    that holds α's keys and the sense vectors."""
    layers = getattr(cache, "layers", None)
    if layers and len(layers) <= index and getattr(cache, "layer_class_to_replicate", None) is None:
        layers.append(type(layers[0])())


class BackpackModel(BackpackPreTrainedModel):
    """Shared embedding, sense network, contextualizer (GPT-2 blocks with learned positions) and sense weights α."""

    def __init__(self, config: BackpackConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.sense_network = SENSE_NETWORK_CLASSES[config.sense_network](config)
        self.layers = nn.ModuleList(BackpackBlock(config, layer) for layer in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.use_bias)
        self.sense_weights = nn.Linear(config.hidden_size, 2 * config.hidden_size, bias=config.sense_weight_bias)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_position_embeddings(self):
        return self.embed_positions

    def resize_position_embeddings(self, new_num_position_embeddings: int):
        """Keep the first rows, initialise new ones as `_init_weights` does, and record the new length."""
        old = self.embed_positions
        new = nn.Embedding(new_num_position_embeddings, old.embedding_dim, device=old.weight.device,
                           dtype=old.weight.dtype)
        self._init_weights(new)
        kept = min(new_num_position_embeddings, old.num_embeddings)
        with torch.no_grad():
            new.weight[:kept] = old.weight[:kept]
        self.embed_positions = new
        self.config.max_position_embeddings = new_num_position_embeddings

    def sense_vectors(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, k, T, d) sense vectors of the ids (a function of each id alone)."""
        return self._senses(self.embed_tokens(input_ids))

    def _senses(self, embeddings):
        senses = self.sense_network(self.dropout(embeddings))
        return senses.unflatten(-1, (self.config.num_senses, -1)).transpose(1, 2)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        cache: Optional[DynamicCache] = None,
        use_cache: Optional[bool] = None,
        contextualization: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
    ):
        """`attention_mask` (B, cached + new): 1 for real tokens; padding is never attended nor a source of α.
        `position_ids` default to the count of real tokens before each one. `contextualization`: α (B, k, T, T) to
        use instead of the computed one (sense interventions, the original's `run_with_custom_contextualization`).
        `cache` (`past_key_values` before transformers 5.24): a `DynamicCache` to extend; `use_cache` defaults to
        `config.use_cache` outside training. `inputs_embeds` (B, T, d) replace `embed_tokens(input_ids)`: they feed
        both the sense network and the contextualizer, as the token embeddings do (senses are a function of the
        embedding alone). `output_attentions` makes the call's attention eager (only it has the probabilities)."""
        config = self.config
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the cache once: cache (past_key_values is its old name), not both")
            if cache_renamed() and not torch.compiler.is_compiling():
                warnings.warn(f"`past_key_values` is deprecated for `{type(self).__name__}.forward`. Use `cache` "
                              "instead.", FutureWarning, stacklevel=2)
            cache = past_key_values
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(f"the Backpack cache must be a DynamicCache, got {type(cache).__name__}: its last layer "
                             "holds α's keys and the sense vectors, which a static or quantized cache cannot; "
                             "generate with the default cache (not cache_implementation='static')")
        if use_cache is None:
            use_cache = getattr(config, "use_cache", True) and not self.training  # a loss has no use for a cache
        if use_cache and self.training and torch.is_grad_enabled() and \
                any(block.gradient_checkpointing for block in self.layers):
            # the checkpointed blocks would run twice and write their keys twice
            get_logger(__name__).warning_once("use_cache=True is incompatible with gradient checkpointing: no cache")
            use_cache, cache = False, None
        if use_cache and cache is None:
            cache = DynamicCache()
        output_attentions = getattr(config, "output_attentions", False) if output_attentions is None \
            else output_attentions
        implementation = config._attn_implementation or "eager"
        if output_attentions and implementation != "eager":
            # as transformers 4 did: only the eager attention has the probabilities, so this call computes them so
            get_logger(__name__).warning_once(f"output_attentions=True: the attention of this call is eager, "
                                              f"{implementation} returns no probabilities")
            implementation = "eager"
        past_length = cache.get_seq_length() if cache is not None else 0
        tokens = check_inputs(input_ids, inputs_embeds, attention_mask, past_length, config,
                              self._values_checked(input_ids if input_ids is not None else inputs_embeds))
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        batch, length = tokens.shape
        if position_ids is not None:
            # only the shape of `tokens` is read
            check_position_ids(position_ids, tokens, config.max_position_embeddings,
                               self._values_checked(position_ids))
        else:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_length:]
            else:
                position_ids = torch.arange(past_length, past_length + length, device=tokens.device)[None]
        # sdpa takes plain causal attention as no mask; eager and flex_attention need it spelled out
        mask = causal_mask(attention_mask, length, past_length, tokens.device, explicit=implementation != "sdpa")

        embeddings = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        senses = self._senses(embeddings)
        hidden = self.dropout(embeddings + self.embed_positions(position_ids))
        if implementation == "flex_attention":
            attention_bias = flex_block_mask(attention_mask, batch, length, past_length, tokens.device)
        else:
            attention_bias = None if mask is None else additive_mask(mask, batch, hidden.dtype)
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.layers:
            hidden, probabilities = block(hidden, attention_bias, cache=cache, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
            if output_attentions:
                all_attentions = all_attentions + (probabilities,)
        hidden = self.final_norm(hidden)
        alpha, all_senses = self.sense_alpha(hidden, senses, mask, cache, contextualization)
        output = (alpha @ all_senses).sum(dim=1)
        result = BackpackModelOutput(last_hidden_state=output, senses=senses, contextualization=alpha,
                                     contextual_hidden_state=hidden, cache=cache if use_cache else None,
                                     hidden_states=all_hidden,
                                     attentions=all_attentions)
        return result if (config.return_dict if return_dict is None else return_dict) else result.to_tuple()

    def sense_alpha(self, hidden, senses, mask, cache, contextualization=None):
        """(α (B, k, Tq, Tk), sense vectors of all Tk positions): per sense, a softmax over the visible positions
        of q_i · k_j (divided by sqrt(d/k) with `scale_sense_weights`)."""
        config = self.config
        queries, keys = self.sense_weights(hidden).unflatten(-1, (2, config.num_senses, -1)).unbind(2)
        queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
        if cache is not None:
            ensure_cache_layer(cache, config.num_hidden_layers)
            keys, senses = cache.update(keys, senses, config.num_hidden_layers)
        if contextualization is not None:
            if contextualization.shape != (*queries.shape[:3], keys.shape[2]):
                raise ValueError(f"contextualization must have shape (batch, senses, new tokens, all tokens) = "
                                 f"{(*queries.shape[:3], keys.shape[2])}, got {tuple(contextualization.shape)}")
            return contextualization.to(senses.dtype), senses
        scores = queries @ keys.transpose(-1, -2)
        if config.scale_sense_weights:
            scores = scores / (config.hidden_size // config.num_senses) ** 0.5
        if mask is None:  # plain causal: query i (of the last Tq) sees keys up to Tk - Tq + i
            queries_length, keys_length = scores.shape[-2:]
            mask = torch.ones(queries_length, keys_length, dtype=torch.bool, device=scores.device).tril(
                diagonal=keys_length - queries_length)
        alpha = torch.softmax(scores.float().masked_fill(~mask, float("-inf")), dim=-1).type_as(scores)
        return self.dropout(alpha), senses


class BackpackForCausalLM(BackpackPreTrainedModel, GenerationMixin):
    """The Backpack and its head (the input embedding, tied): logits = E · Σ_senses α @ senses."""

    _tied_weights_keys = {"lm_head.weight": "backpack.embed_tokens.weight"}

    def __init__(self, config: BackpackConfig):
        super().__init__(config)
        self.backpack = BackpackModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backpack.embed_tokens

    def set_input_embeddings(self, value):
        self.backpack.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def get_position_embeddings(self):
        return self.backpack.get_position_embeddings()

    def resize_position_embeddings(self, new_num_position_embeddings: int):
        self.backpack.resize_position_embeddings(new_num_position_embeddings)

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        past_key_values: Optional[DynamicCache] = None,
        cache: Optional[DynamicCache] = None,
        use_cache: Optional[bool] = None,
        contextualization: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        num_items_in_batch: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        shift_labels: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
    ):
        """`labels` (B, T): the input ids with `ignore_index` where no loss is wanted (padding); shifted once inside.
        `shift_labels` (B, T): the targets already aligned with the positions (Trainer passes them under context
        parallelism, where a shift inside one shard would be wrong); given, they are the targets and `labels` is not
        read. The loss is the mean cross-entropy over the targets that are not `ignore_index`, or their sum /
        `num_items_in_batch`."""
        outputs = self.backpack(input_ids, attention_mask, position_ids, past_key_values, cache, use_cache,
                                contextualization, output_hidden_states, return_dict=True,
                                inputs_embeds=inputs_embeds, output_attentions=output_attentions)
        logits = self.lm_head(outputs.last_hidden_state).float()
        loss = None
        if labels is not None or shift_labels is not None:
            loss = next_token_loss(logits, labels, shift_labels, self.config.vocab_size, num_items_in_batch,
                                   ignore_index,
                                   self._values_checked(labels if shift_labels is None else shift_labels))
        result = BackpackCausalLMOutput(loss=loss, logits=logits, senses=outputs.senses,
                                        contextualization=outputs.contextualization, cache=outputs.cache,
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return result if (self.config.return_dict if return_dict is None else return_dict) else result.to_tuple()

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`, refusing before any work a cache other than the dynamic one: the last layer
        of a Backpack cache holds α's keys and the sense vectors, which a static (or quantized) cache cannot."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        implementation = kwargs.get("cache_implementation", getattr(generation_config, "cache_implementation", None))
        if implementation not in (None, "dynamic", "offloaded"):
            raise ValueError(f"cache_implementation={implementation!r} is not supported by Backpack models: the last "
                             "cache layer holds α's keys and the sense vectors, which only the dynamic cache can "
                             "(generate without cache_implementation, not cache_implementation='static')")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        # transformers 4.57's generate adds `cache_position` for every model; positions here come from the cache
        # length and the attention mask, so it is not an input (and transformers 5 warns about remote code taking it).
        # `inputs_embeds` stays named: generate reads this signature to accept them.
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        inputs.pop("cache_position", None)
        return inputs


def next_token_loss(logits, labels, shift_labels, vocab_size: int, num_items_in_batch, ignore_index: int,
                    check_values: bool) -> torch.Tensor:
    """Cross-entropy of position t against labels[t + 1] (or shift_labels[t]), ignoring `ignore_index`: the mean, or
    the sum / num_items_in_batch."""
    if shift_labels is None:
        if labels.shape != logits.shape[:2]:
            raise ValueError(f"labels shape {tuple(labels.shape)} must match input_ids {tuple(logits.shape[:2])}")
        targets = F.pad(labels[:, 1:], (0, 1), value=ignore_index)
    else:
        if shift_labels.shape != logits.shape[:2]:
            raise ValueError(f"shift_labels shape {tuple(shift_labels.shape)} must match input_ids "
                             f"{tuple(logits.shape[:2])}")
        targets = shift_labels
    if check_values and ((targets != ignore_index) & ((targets < 0) | (targets >= vocab_size))).any():
        raise ValueError(f"labels hold ids outside [0, {vocab_size}) that are not ignore_index ({ignore_index})")
    if num_items_in_batch is None:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index,
                           reduction="sum") / num_items_in_batch


__all__ = ["BackpackPreTrainedModel", "BackpackModel", "BackpackForCausalLM"]
