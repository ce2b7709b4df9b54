"""LTG-BERT: a BERT-style masked language model with disentangled relative-position attention.

Paper: Samuel, Kutuzov, Øvrelid, Velldal (2023), "Trained on 100 million words and still in shape: BERT meets British
National Corpus", arXiv:2303.09859. Reference implementation: ltgoslo/ltg-bert@4fe9e6f (`babylm/train/model.py`) and
the classic `LtgBertForMaskedLM` Hub wrapper (`modeling_ltgbert.py`); the math matches both to float precision.

What the architecture is (and why it differs from BERT):
  * no absolute positions: every layer adds DeBERTa-style content-to-position and position-to-content terms computed
    from one shared, layer-normed table of `2 * position_bucket_size - 1` relative embeddings (log-spaced buckets);
  * NormFormer-like LayerNorm placement: non-affine LayerNorm before each sublayer, an affine one after attention and a
    non-affine one inside the GEGLU feed-forward; no final encoder LayerNorm;
  * the MLM head is tied to the word embedding and has its own bias.

Deliberate deviations from the original wrapper:
  * `hidden_states` are the cumulative layer states `(h_0, h_1, ..., h_L)` like every transformers model; the original
    wrapper returned per-layer deltas `(h_0, h_1 - h_0, ..., h_L - h_{L-1})`.
  * inputs longer than `max_position_embeddings` raise a `ValueError` (the wrapper crashed with an AttributeError);
    token ids outside the vocabulary raise a `ValueError` instead of an index error or a device-side assert (on an
    accelerator unless `check_values_on_device` was turned off, as hubzoo's trainers do while their collator checks
    every batch on the CPU).
  * attention runs through transformers' attention interface (`attn_implementation` "eager", "sdpa" or
    "flex_attention") with the relative-position terms and the padding folded into one additive float score bias; see
    `LtgBertAttention` for why no other implementation can run this model exactly.
  * relative-position bucket indices are derived from the config at run time instead of being stored in checkpoints.
"""

import functools
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_ltg_bert import LtgBertConfig


def relative_position_buckets(seq_len: int, bucket_size: int, max_position: int) -> torch.Tensor:
    """Index into the relative-embedding table for every (query i, key j) pair: `bucket_size - 1 + bucket(i - j)`.

    Offsets with |i - j| <= bucket_size // 2 keep their exact value; longer ones are mapped logarithmically onto the
    remaining buckets, reaching the last bucket at `max_position - 1`.

    Always computed on CPU in float32, as the original did when it built its `position_indices` buffer: the `ceil`
    of a logarithm sits exactly on an integer for some offsets, where an accelerator's `log` may round the other way.
    """
    positions = torch.arange(seq_len, dtype=torch.long)
    relative = positions[:, None] - positions[None, :]  # (T, T), query minus key
    mid = bucket_size // 2
    sign = torch.sign(relative)
    # Offsets inside the exact window get a placeholder so the log below stays finite; they are not used.
    magnitude = torch.where(relative.abs() < mid, mid - 1, relative.abs().clamp(max=max_position - 1))
    log_bucket = torch.ceil(
        torch.log(magnitude / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ).long() + mid
    bucket = torch.where(magnitude <= mid, relative, log_bucket * sign)
    return bucket_size - 1 + bucket


@functools.lru_cache(maxsize=8)
def _cached_relative_position_table(bucket_size: int, max_position: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return relative_position_buckets(max_position, bucket_size, max_position).to(device)


def relative_position_table(bucket_size: int, max_position: int, device: torch.device) -> torch.Tensor:
    """The buckets of every (i, j) up to `max_position`, on `device`, computed once: callers slice `[:T, :T]` (a
    bucket depends on i - j only, so the slice equals the buckets of length T, as the original's buffer was used).
    Cached because a copy from pageable host memory at every forward would synchronise host and device each step;
    built outside inference mode, so that a first call under `torch.inference_mode()` caches a normal tensor.

    While torch.compile / torch.export trace, the table is built afresh and never cached: a tensor made during a trace
    is a fake (or functional) tensor, and caching it would hand it to every later eager forward in the process."""
    if torch.compiler.is_compiling():
        return relative_position_buckets(max_position, bucket_size, max_position).to(device)
    return _cached_relative_position_table(bucket_size, max_position, device)


# The attention implementations that add a dense float mask to the scores, which is how the relative-position terms
# enter (see `LtgBertAttention`); flash-attention kernels and serving backends take no such bias.
EXACT_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention")


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Explicit softmax attention: `softmax(scaling * q k^T + attention_mask) v`. `attention_mask` is the additive
    float bias (relative-position terms and padding), `(B, H, T, T)`. Returns the output as `(B, T, H, head_dim)`,
    like transformers' attention functions, and the probabilities (before dropout)."""
    probs = (torch.matmul(query, key.transpose(-1, -2)) * scaling + attention_mask).softmax(dim=-1)
    output = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), probs


class LtgBertEmbeddings(nn.Module):
    """Word embeddings (normalised, no positions) plus the shared relative-position table."""

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_embeddings = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, config.hidden_size))
        self.relative_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        # `inputs_embeds` stand in for the word-embedding lookup; the normalisation applies to both, as in BERT.
        embeds = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self.dropout(self.word_layer_norm(embeds))
        relative = self.relative_layer_norm(self.relative_embeddings)  # (2 * bucket - 1, D), shared by all layers
        return hidden, relative


class LtgBertAttention(nn.Module):
    """Disentangled self-attention: content-content scores plus content-to-position and position-to-content terms.

    The two position terms depend on the query and key content, so they differ per batch row and head; but they enter
    the scores only as an addition before the softmax. They are computed here, padding is written into them, and the
    result goes to transformers' attention interface as the (B, H, T, T) float `attention_mask`: "eager" (our
    explicit softmax, which can return the probabilities) and "sdpa" (a float `attn_mask` is added to the scores);
    "flex_attention" gets it as the per-head `position_bias` its `score_mod` adds (transformers 5 only, see
    `_flex_attention`). All three compute exactly the original's attention. Flash-attention
    kernels take only a padding mask, not an arbitrary bias, so the model does not claim them.
    """

    is_causal = False  # an encoder: every token sees every other (read by transformers' sdpa function)

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.config = config  # read at call time: `attn_implementation` can change after construction
        self.position_qk_split = config.position_qk_split
        # Three score terms (content-content, content-position, position-content) are summed, hence 3 * head_dim.
        self.scale = 1.0 / math.sqrt(3 * self.head_dim)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.qk_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.relative_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        # The original applies its attention dropout here too (not the hidden dropout).
        self.output_dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def _position_projections(self, relative: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # The relative embeddings reuse the content query/key projection, bias included.
        projected = self.qk_proj(self.relative_dropout(relative))  # (R, 2D)
        if self.position_qk_split == "chunk_first":
            query_pos, key_pos = projected.chunk(2, dim=-1)
            query_pos = query_pos.reshape(-1, self.num_heads, self.head_dim)
            key_pos = key_pos.reshape(-1, self.num_heads, self.head_dim)
        else:  # per_head_interleaved: head h owns features [2h*hd, 2(h+1)*hd), query half first
            query_pos, key_pos = projected.view(-1, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
        return query_pos, key_pos  # (R, H, hd) each

    def _position_bias(self, query, scaled_key, relative, buckets) -> torch.Tensor:
        """Content-to-position plus position-to-content scores, (B, H, T, T), already scaled:
        c2p[b,h,i,j] = q_i . key_pos[bucket(i-j)] and p2c[b,h,i,j] = k_j . query_pos[bucket(i-j)].

        Two formulations of the same sums. In eval mode, the original's: score every bucket, then gather (its op
        order keeps converted checkpoints within float32 rounding of the reference). In training, the position
        vectors of each (i, j) pair are picked by a one-hot matmul and both terms become batched matmuls, whose
        backward is matmuls too; the gather's backward is an atomic scatter-add (small config, compiled, H200:
        41.6 ms per training step with the gather, 29.0 ms with this). Its cost is memory: two (T, T, D) tables per
        layer are kept for backward, whatever the batch size; small beside the (B, H, T, T) scores at T = 128, about
        0.8 GB per layer at T = 512, D = 768 in bf16.
        """
        query_pos, key_pos = self._position_projections(relative)
        if not self.training:
            batch, heads, seq_len, _ = query.shape
            index = buckets.expand(batch, heads, seq_len, seq_len)
            content_to_position = torch.einsum("bhqd,rhd->bhqr", query, key_pos * self.scale).gather(3, index)
            position_to_content = torch.einsum("bhkd,rhd->bhrk", scaled_key, query_pos).gather(2, index)
            return content_to_position + position_to_content
        seq_len = query.shape[2]
        # (T * T, R); built by comparison, as F.one_hot validates its indices with a host-device sync
        bucket_ids = torch.arange(key_pos.shape[0], device=buckets.device)
        selector = (buckets.flatten()[:, None] == bucket_ids).to(key_pos.dtype)
        table_shape = (seq_len, seq_len, self.num_heads, self.head_dim)
        key_table = (selector @ (key_pos * self.scale).flatten(1)).view(table_shape)
        query_table = (selector @ query_pos.flatten(1)).view(table_shape)
        content_to_position = torch.einsum("bhid,ijhd->bhij", query, key_table)
        position_to_content = torch.einsum("bhjd,ijhd->bhij", scaled_key, query_table)
        return content_to_position + position_to_content

    def forward(self, hidden, relative, buckets, padding, output_attentions=False):
        normed = self.pre_layer_norm(hidden)
        query, key = self.qk_proj(normed).chunk(2, dim=-1)
        query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(self.v_proj(normed))
        # Scaling the keys before the products (instead of the scores after) follows the original's operation order,
        # which keeps converted checkpoints within float32 rounding of the reference outputs; hence `scaling=1.0`.
        key = key * self.scale
        bias = self._position_bias(query, key, relative, buckets)
        if padding is not None:  # (B, 1, 1, T), True at padded keys; filled in place of adding a float32 mask, which
            # under bf16 autocast made the (B, H, T, T) bias float32
            bias = bias.masked_fill(padding, torch.finfo(bias.dtype).min)
        dropout_p = self.dropout_prob if self.training else 0.0
        attention = self._attention_function(output_attentions)
        if attention is not eager_attention_forward and self.config._attn_implementation == "flex_attention":
            context, probs = self._flex_attention(attention, query, key, value, bias, dropout_p), None
        else:
            context, probs = attention(self, query, key, value, bias, scaling=1.0, dropout=dropout_p)
        batch, seq_len = context.shape[:2]
        context = context.reshape(batch, seq_len, self.num_heads * self.head_dim)  # (B, T, D)
        output = self.output_dropout(self.post_layer_norm(self.out_proj(context)))
        return output, (probs if output_attentions else None)

    def _attention_function(self, output_attentions: bool):
        """The function `config._attn_implementation` names in transformers' attention interface; ours for "eager".
        The probabilities exist only on the explicit path, so asking for them runs it whatever the implementation."""
        implementation = self.config._attn_implementation or "eager"
        if implementation not in EXACT_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={implementation!r} cannot run LTG-BERT: its relative-position terms are an "
                f"additive score bias, which only {', '.join(EXACT_ATTENTION_IMPLEMENTATIONS)} apply."
            )
        if output_attentions or implementation == "eager":
            return eager_attention_forward
        if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):  # transformers 5
            return ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        return ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]  # transformers 4.57: no `get_interface`

    def _flex_attention(self, attention, query, key, value, bias, dropout_p):
        """transformers 5's flex function adds `position_bias[b, h, i, j]` in its `score_mod`: the whole bias, padding
        included, goes there. (Its `attention_mask` tensor path adds `mask[b][0][i][j]`, one bias per row shared by
        the heads, which is not this model's math, and that chained indexing crashes torch 2.13's compiled CPU
        kernel.) transformers 4.57's flex function has no per-head bias, so it is refused there."""
        if "position_bias" not in attention.__code__.co_varnames:
            raise ValueError("attn_implementation='flex_attention' needs transformers 5, whose flex_attention function "
                             "takes a per-head position_bias; use 'sdpa' (the same math) on this version")
        context, _ = attention(self, query, key, value, None, scaling=1.0, dropout=dropout_p, position_bias=bias)
        return context


class LtgBertDepthScaledLinear(nn.Linear):
    """A bias-free Linear whose init std is multiplied by `init_scale`.

    The scale lives on the Linear itself because transformers 5 skips `_init_weights` for custom-code modules that
    own no parameters directly, so a branch keyed on the parent feed-forward module would never run.
    """

    def __init__(self, in_features: int, out_features: int, init_scale: float):
        super().__init__(in_features, out_features, bias=False)
        self.init_scale = init_scale


class LtgBertFeedForward(nn.Module):
    """Non-affine LayerNorm -> GEGLU -> non-affine LayerNorm -> projection; no biases."""

    def __init__(self, config: LtgBertConfig, layer_idx: int):
        super().__init__()
        # The original init shrinks the feed-forward weights of layer i by sqrt(1 / (2 (i + 1))).
        init_scale = math.sqrt(1.0 / (2.0 * (layer_idx + 1)))
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.up_proj = LtgBertDepthScaledLinear(config.hidden_size, 2 * config.intermediate_size, init_scale)
        self.mid_layer_norm = nn.LayerNorm(
            config.intermediate_size, eps=config.layer_norm_eps, elementwise_affine=False
        )
        self.down_proj = LtgBertDepthScaledLinear(config.intermediate_size, config.hidden_size, init_scale)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        value, gate = self.up_proj(self.pre_layer_norm(hidden)).chunk(2, dim=-1)
        geglu = value * F.gelu(gate, approximate="tanh")
        return self.dropout(self.down_proj(self.mid_layer_norm(geglu)))


class LtgBertLayer(GradientCheckpointingLayer):
    """One encoder layer. A `GradientCheckpointingLayer`: `gradient_checkpointing_enable` makes calling it recompute
    its activations in backward (for every `every_n_layers`-th layer); the tensors that need gradients are passed
    positionally, as reentrant checkpointing requires."""

    def __init__(self, config: LtgBertConfig, layer_idx: int):
        super().__init__()
        self.attention = LtgBertAttention(config)
        self.mlp = LtgBertFeedForward(config, layer_idx)

    def forward(self, hidden, relative, buckets, padding, output_attentions=False):
        attention_output, probs = self.attention(hidden, relative, buckets, padding, output_attentions)
        hidden = hidden + attention_output
        hidden = hidden + self.mlp(hidden)
        return hidden, probs


class LtgBertPreTrainedModel(PreTrainedModel):
    config_class = LtgBertConfig
    base_model_prefix = "ltg_bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LtgBertLayer"]
    # The relative-position terms are an additive score bias, which these apply exactly (see `LtgBertAttention`).
    _supports_sdpa = True
    _supports_flex_attn = True
    # No flash attention (its kernels take no arbitrary score bias), hence no serving backend either: those flags
    # promise kernels fed through the attention interface with only a padding mask.
    _supports_flash_attn = False
    _supports_attention_backend = False
    # The range checks of ids and labels read tensor values: on an accelerator each is a host-device sync, which
    # stalls training. hubzoo's trainers check every batch on the CPU before it moves, then turn this off
    # (`trainers.mlm_trainer`); tensors on the CPU are always checked.
    check_values_on_device = True

    def _values_checked(self, tensor: torch.Tensor) -> bool:
        """Whether the checks that read `tensor`'s values run: in eager mode on the CPU, and on an accelerator unless
        `check_values_on_device` is off."""
        if torch.compiler.is_compiling():  # torch.compile / torch.export trace fake tensors; eager keeps the checks
            return False
        return tensor.device.type == "cpu" or self.check_values_on_device

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range * getattr(module, "init_scale", 1.0)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LtgBertEmbeddings):
            nn.init.trunc_normal_(module.relative_embeddings, mean=0.0, std=std, a=-2 * std, b=2 * std)

    def _check_inputs(self, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
                      inputs_embeds: Optional[torch.Tensor] = None) -> None:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), got "
                                 f"{tuple(inputs_embeds.shape)}")
            if not inputs_embeds.is_floating_point():
                raise ValueError(f"inputs_embeds must be a floating-point tensor, got {inputs_embeds.dtype}")
            shape = inputs_embeds.shape[:2]
        else:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
            if input_ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
            shape = input_ids.shape
        if shape.numel() == 0:
            name = "input_ids" if inputs_embeds is None else "inputs_embeds"
            raise ValueError(f"{name} is empty (batch and length {tuple(shape)}): a batch needs at least one "
                             "sequence of at least one token")
        if shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {shape[1]} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); truncate the input."
            )
        if input_ids is not None and self._values_checked(input_ids):
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one host-device sync, not two
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"input_ids contain ids outside [0, {self.config.vocab_size}) (min {low}, max {high}); "
                    "the tokenizer does not match this model's vocabulary."
                )
        if attention_mask is not None and attention_mask.shape != shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match the input's (batch, seq_len) "
                f"{tuple(shape)}"
            )
        if attention_mask is not None and self._values_checked(attention_mask) and \
                not bool(attention_mask.bool().any(dim=1).all()):
            raise ValueError("attention_mask has a row of zeros: that sequence has no real token to attend to")


class LtgBertModel(LtgBertPreTrainedModel):
    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.embeddings = LtgBertEmbeddings(config)
        self.layers = nn.ModuleList(LtgBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
    ):
        """`inputs_embeds` (batch, seq_len, hidden_size) replace the word-embedding lookup of `input_ids`.
        `attention_mask`: 1 for real tokens, 0 for padding; padding is hidden from every key position. Padded
        query positions are still computed (and should be ignored by the caller)."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = True if return_dict is None else return_dict
        self._check_inputs(input_ids, attention_mask, inputs_embeds)

        hidden, relative = self.embeddings(input_ids, inputs_embeds)
        seq_len = hidden.shape[1]
        buckets = relative_position_table(
            self.config.position_bucket_size, self.config.max_position_embeddings, hidden.device
        )[:seq_len, :seq_len]
        padding = None if attention_mask is None else (attention_mask == 0)[:, None, None, :]

        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden, probs = layer(hidden, relative, buckets, padding, output_attentions)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
            if output_attentions:
                all_attentions = all_attentions + (probs,)

        output = BaseModelOutput(last_hidden_state=hidden, hidden_states=all_hidden, attentions=all_attentions)
        return output if return_dict else output.to_tuple()


class LtgBertMaskedLMHead(nn.Module):
    """LayerNorm -> dense -> GELU (exact) -> LayerNorm -> dropout -> vocabulary projection (tied) + own bias."""

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.post_layer_norm(F.gelu(self.dense(self.pre_layer_norm(hidden))))
        return self.decoder(self.dropout(hidden))


class LtgBertClassificationHead(nn.Module):
    """The original sequence-classification head, also applied per token for token classification."""

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        dropout = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.post_layer_norm(F.gelu(self.dense(self.pre_layer_norm(hidden))))
        return self.out_proj(self.dropout(hidden))


def _check_class_labels(labels: torch.Tensor, expected_shape, num_classes: int, check_values: bool = True) -> None:
    if labels.shape != expected_shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match inputs shape {tuple(expected_shape)}")
    if check_values and bool(((labels < 0) & (labels != -100) | (labels >= num_classes)).any()):
        valid = labels[labels != -100]
        raise ValueError(f"labels must be -100 (ignored) or in [0, {num_classes}), got "
                         f"{valid.min().item()}..{valid.max().item()}")


class LtgBertForMaskedLM(LtgBertPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "ltg_bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.ltg_bert = LtgBertModel(config)
        self.lm_head = LtgBertMaskedLMHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.ltg_bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.ltg_bert.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        sparse_prediction: bool = False,
        inputs_embeds: Optional[torch.Tensor] = None,
    ):
        """`labels`: original ids at the positions to predict, -100 elsewhere (padding included). The loss is the mean
        cross-entropy over labelled positions; no shift.

        `sparse_prediction=True` (needs `labels`) runs the head on the labelled positions only, as the original
        LTG-BERT training did, and returns their logits flattened to `(num_labelled, vocab_size)` in row-major order
        of `labels`; the loss is unchanged. With 15% of tokens labelled this skips most of the vocabulary projection.
        """
        outputs = self.ltg_bert(input_ids, attention_mask, output_attentions, output_hidden_states, return_dict=True,
                                inputs_embeds=inputs_embeds)
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            _check_class_labels(labels, hidden.shape[:-1], self.config.vocab_size, self._values_checked(labels))
        if sparse_prediction:
            if labels is None:
                raise ValueError("sparse_prediction=True needs labels: they say which positions to predict")
            labelled = labels.flatten() != -100
            logits = self.lm_head(hidden.flatten(0, 1)[labelled])
            loss = F.cross_entropy(logits.float(), labels.flatten()[labelled], reduction="sum") / labelled.sum().clamp(
                min=1)
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict in (None, True) else output.to_tuple()


class LtgBertForSequenceClassification(LtgBertPreTrainedModel):
    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ltg_bert = LtgBertModel(config)
        self.classifier = LtgBertClassificationHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.ltg_bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.ltg_bert.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
    ):
        """Classifies the first position ([CLS]). `labels`: class ids (float targets for regression)."""
        outputs = self.ltg_bert(input_ids, attention_mask, output_attentions, output_hidden_states, return_dict=True,
                                inputs_embeds=inputs_embeds)
        logits = self.classifier(outputs.last_hidden_state[:, 0])  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self._classification_loss(logits, labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict in (None, True) else output.to_tuple()

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() == 0 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels shape {tuple(labels.shape)} must start with the batch size {logits.shape[0]}")
        # Same problem-type inference as transformers' BERT heads, so Trainer recipes carry over.
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        if self.config.problem_type == "single_label_classification":
            if labels.shape != logits.shape[:1]:
                raise ValueError(f"labels shape {tuple(labels.shape)} must be (batch,) = {tuple(logits.shape[:1])}")
            _check_class_labels(labels, logits.shape[:-1], self.num_labels, self._values_checked(labels))
            return F.cross_entropy(logits.float(), labels)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class LtgBertForTokenClassification(LtgBertPreTrainedModel):
    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ltg_bert = LtgBertModel(config)
        self.classifier = LtgBertClassificationHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.ltg_bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.ltg_bert.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
    ):
        """`labels`: a class id per token, -100 for positions to ignore (padding, sub-word continuations)."""
        outputs = self.ltg_bert(input_ids, attention_mask, output_attentions, output_hidden_states, return_dict=True,
                                inputs_embeds=inputs_embeds)
        logits = self.classifier(outputs.last_hidden_state)  # (B, T, num_labels)
        loss = None
        if labels is not None:
            _check_class_labels(labels, logits.shape[:-1], self.num_labels, self._values_checked(labels))
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict in (None, True) else output.to_tuple()


__all__ = [
    "LtgBertPreTrainedModel",
    "LtgBertModel",
    "LtgBertForMaskedLM",
    "LtgBertForSequenceClassification",
    "LtgBertForTokenClassification",
]
