"""BD3-LM: block diffusion language models, masked diffusion within blocks and autoregression across them.

Paper: Arriola, Gokaslan, Chiu, Yang, Qi, Han, Sahoo, Kuleshov (2025), "Block Diffusion: Interpolating Between
Autoregressive and Diffusion Language Models", arXiv:2503.09573. Reference implementation:
kuleshov-group/bd3lms@1c3e8f43 (`models/dit.py`, `models/hf/modeling_bd3lm.py`, `diffusion.py`); with the same weights
the logits match it to float32 rounding.

What the model is:
  * the MDLM DiT (rotary attention, adaLN, SUBS) with attention restricted by blocks of `block_size` tokens;
  * training is vectorised over blocks: the input is x_t (+) x_0 (length 2L, both halves at positions 0..L-1) under
    the union of three masks: block-diagonal (each half within its block), offset block-causal (x_t block b sees the
    clean x_0 blocks before b) and block-causal (x_0 block b sees x_0 blocks <= b); only the x_t half's logits are
    kept. Each block has its own t, mask rate t and NELBO weight 1/t;
  * generation is block by block: a block is denoised while attending to the clean blocks before it, whose keys and
    values are cached (exact: clean blocks never attend to later ones).
  * `sampling_eps_min` / `sampling_eps_max` are persistent buffers: trained values travel with the weights.

Deliberate deviations from the original:
  * `forward` is deterministic; the caller draws t and the masked positions. `forward(input_ids=x_t,
    clean_ids=x_0)` is the training pass; `forward(input_ids=...)` alone is the generation pass (block-causal over the
    given blocks, optionally after cached ones).
  * `attention_mask` hides padded keys (the original attends to padding and only its loss ignores it).
  * attention through transformers' attention functions (`attn_implementation` eager, sdpa or flex_attention) with
    one boolean mask (FlexAttention is a speed option of the original, with the same math); the KV cache is a plain
    object passed in and returned, instead of tensors stored on the modules with a hard-coded CUDA device and bfloat16
    dtype.
  * ids outside the vocabulary, sequences longer than `max_position_embeddings`, empty batches, rows of zeros in
    `attention_mask`, timesteps outside (0, 1], a sampling prefix holding the mask id and invalid sampling intervals
    raise a `ValueError`.
"""

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.logging import tqdm

from .configuration_bd3lm import Bd3lmConfig, validate_sampling_interval


# Copied from modeling.mdlm.modeling_mdlm[shared DiT]
# ---- shared DiT (begin): modeling_bd3lm.py carries a copy of this section, checked by utils/check_copies.py; each
# exported modeling file must stand alone, so the two architectures carry the same code. ----


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def build_rotary_tables(length: int, head_dim: int, base: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(length, head_dim) float32 cos and sin of rotate-half (NeoX) rotary embeddings for positions 0..length-1,
    frequencies repeated in both halves, in float32 (not a buffer, which a `.to(bfloat16)` would round); callers slice
    the positions they need."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


@functools.lru_cache(maxsize=16)
def _cached_rotary_tables(length: int, head_dim: int, base: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # a table made under inference mode could not be used by a later training step
        return build_rotary_tables(length, head_dim, base, device)


def rotary_tables(length: int, head_dim: int, base: float, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """`build_rotary_tables`, built once per (length, size, device) in eager mode. While torch.compile / torch.export
    trace, the tables are fake tensors: they are built in the graph and never enter the cache, where a later eager call
    would find them."""
    if torch.compiler.is_compiling():
        return build_rotary_tables(length, head_dim, base, device)
    return _cached_rotary_tables(length, head_dim, base, device)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, head_dim) queries or keys; the original casts the tables to the activations' dtype."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTLayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, normalised in float32 even under autocast (as the original)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            normed = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps)
            # In x's dtype: float32 under autocast (the residual stream is float32), bfloat16 in a bfloat16 model
            return (normed * self.weight.float()).to(x.dtype)


class DiTTimestepEmbedder(nn.Module):
    """sigma -> sinusoidal features (cos half, then sin half) -> Linear -> SiLU -> Linear."""

    def __init__(self, config):
        super().__init__()
        self.frequency_size = config.timestep_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(config.timestep_embedding_size, config.cond_dim), nn.SiLU(),
            nn.Linear(config.cond_dim, config.cond_dim),
        )

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        angles = sigma.float()[:, None] * freqs[None, :]
        features = torch.cat((angles.cos(), angles.sin()), dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


def eager_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The explicit attention of the DiT, in the signature of transformers' attention functions: softmax(q k^T *
    scaling) over the keys that `attention_mask` (bool, True = may attend) allows, in float32, then times v. Returns
    the output as (B, T, heads, head_dim) and the probabilities (B, heads, T, T_keys)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(probs, dropout, module.training), value)
    return output.transpose(1, 2).contiguous(), probs


def attention_function(implementation: str):
    """eager: `eager_attention`; anything else ("sdpa", "flex_attention", ...) from transformers' registry."""
    return eager_attention if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]


def mask_for_attention(mask: Optional[torch.Tensor], implementation: str, query, key):
    """The boolean mask (B or 1, 1, T or 1, T_keys), True = may attend, in the form the attention function takes: eager
    and sdpa broadcast it as is; flex_attention gets it as a BlockMask whose mask_mod reads the same tensor (its
    additive tensor-mask path crashes on CPU in torch 2.13)."""
    if mask is None or implementation != "flex_attention":
        return mask
    from torch.nn.attention.flex_attention import create_block_mask  # flex needs torch >= 2.5, only asked for here

    batch, queries, keys = query.shape[0], query.shape[2], key.shape[2]
    full = mask.expand(batch, 1, queries, keys)

    def mask_mod(b, h, q, k):
        return full[b, 0, q, k]

    return create_block_mask(mask_mod, batch, None, queries, keys, device=query.device)


class DiTBlock(GradientCheckpointingLayer):
    """adaLN-modulated pre-norm block: rotary self-attention (no biases), then a GELU(tanh) MLP; both residual
    branches are dropped out and scaled by their gate before being added. Attention goes through transformers'
    attention functions, picked by `config._attn_implementation` at each call (eager, sdpa, flex_attention); the mask is
    boolean (padding and BD3-LM's block structure), which flash attention's padding-only masks cannot carry."""

    def __init__(self, config):
        super().__init__()
        hidden = config.hidden_size
        self.config = config  # shared with the model: `set_attn_implementation` reaches every block
        self.is_causal = False  # bidirectional (BD3-LM's block causality is in the mask)
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // config.num_attention_heads
        self.dropout = config.dropout
        self.attn_norm = DiTLayerNorm(hidden, config.layer_norm_eps)
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=False)  # q | k | v, each (heads x head_dim)
        self.out_proj = nn.Linear(hidden, hidden, bias=False)
        self.mlp_norm = DiTLayerNorm(hidden, config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, config.intermediate_size), nn.GELU(approximate="tanh"),
            nn.Linear(config.intermediate_size, hidden),
        )
        # shift, scale, gate for the attention branch, then for the MLP branch
        self.modulation = DiTModulation(config.cond_dim, 6 * hidden) if config.adaln else None

    def forward(self, hidden, cos, sin, conditioning, attn_mask=None, past_key_value=None, output_attentions=False):
        """`attn_mask`: bool, True = may attend, broadcastable to (B, H, T, T_keys). `past_key_value`: rotated keys
        and values of earlier positions, (B, H, T_past, head_dim) each, placed before this call's keys. Returns the new
        hidden states, this call's full keys and values, and the attention probabilities (None unless
        `output_attentions` on the eager path). Callers pass every argument positionally: under reentrant gradient
        checkpointing only positional tensors carry gradients."""
        if self.modulation is not None:
            shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = \
                self.modulation(conditioning)[:, None].chunk(6, dim=-1)
        batch, length, _ = hidden.shape
        normed = self.attn_norm(hidden)
        if self.modulation is not None:
            normed = modulate(normed, shift_attn, scale_attn)
        qkv = self.qkv_proj(normed).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = apply_rotary(qkv[0], cos, sin), apply_rotary(qkv[1], cos, sin), qkv[2]
        if past_key_value is not None:
            key, value = torch.cat((past_key_value[0], key), dim=2), torch.cat((past_key_value[1], value), dim=2)
        implementation = self.config._attn_implementation
        context, probs = attention_function(implementation)(
            self, query, key, value, mask_for_attention(attn_mask, implementation, query, key), dropout=0.0,
            scaling=self.head_dim ** -0.5, is_causal=False, output_attentions=output_attentions)
        branch = F.dropout(self.out_proj(context.reshape(batch, length, -1)), self.dropout, self.training)
        hidden = hidden + (branch if self.modulation is None else gate_attn * branch)
        normed = self.mlp_norm(hidden)
        if self.modulation is not None:
            normed = modulate(normed, shift_mlp, scale_mlp)
        branch = F.dropout(self.mlp(normed), self.dropout, self.training)
        hidden = hidden + (branch if self.modulation is None else gate_mlp * branch)
        return hidden, key, value, (probs if output_attentions else None)


class DiTModulation(nn.Linear):
    """An adaLN projection (its own type, so that `_init_weights` can zero it: transformers initialises remote-code
    modules that own parameters directly, never a parent that only holds them)."""


class DiTVocabProjection(nn.Linear):
    """The output projection onto the vocabulary (its own type for the same reason as `DiTModulation`)."""


class DiTOutputLayer(nn.Module):
    """Final bias-free LayerNorm, adaLN shift/scale, and the vocabulary projection (with bias)."""

    def __init__(self, config):
        super().__init__()
        self.norm = DiTLayerNorm(config.hidden_size, config.layer_norm_eps)
        self.modulation = DiTModulation(config.cond_dim, 2 * config.hidden_size) if config.adaln else None
        self.lm_head = DiTVocabProjection(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        if self.modulation is not None:
            shift, scale = self.modulation(conditioning)[:, None].chunk(2, dim=-1)
            hidden = modulate(hidden, shift, scale)
        return self.lm_head(hidden)


def init_dit_weights(module: nn.Module, config) -> None:
    """The `_init_weights` of both diffusion architectures: normal(0, initializer_range) weights, zero biases, unit
    norms; with `zero_init_modulation` (adaLN-Zero, as the original) the adaLN projections and the untied output
    projection start at zero, so every block starts as the identity and the logits at zero."""
    std = config.initializer_range
    if isinstance(module, (DiTModulation, DiTVocabProjection)):
        zeroed = config.zero_init_modulation and not (isinstance(module, DiTVocabProjection)
                                                      and config.tie_word_embeddings)
        nn.init.zeros_(module.weight) if zeroed else nn.init.normal_(module.weight, std=std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, DiTLayerNorm):
        nn.init.ones_(module.weight)


def masked_diffusion_nelbo(logits, noisy_ids, clean_ids, weights, mask_token_id: int) -> torch.Tensor:
    """Per-token NELBO terms of a masked diffusion LM under SUBS, float32 (B, T):
    `weights * -log p(x_0 | x_t)` where x_t holds the mask, 0 where it does not (SUBS copies unmasked tokens, so their
    log-probability is exactly 0) and where `clean_ids` is -100 (positions excluded, e.g. padding).

    SUBS never predicts the mask: its logit is removed before the softmax. `weights` broadcasts to (B, T) (MDLM: one
    per sequence; BD3-LM: one per block)."""
    scores = logits.float()
    if scores is logits:  # the caller's fp32 logits are not edited in place
        scores = scores.clone()
    scores[..., mask_token_id] = float("-inf")
    targets = torch.where(noisy_ids == mask_token_id, clean_ids, torch.full_like(clean_ids, -100))
    nll = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    return nll.view_as(clean_ids) * weights


def subs_log_probs(logits: torch.Tensor, noisy_ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """log p(x_0 | x_t) under SUBS, float32 (B, T, V): a softmax without the mask token at masked positions, a one-hot
    copy (0 at the observed token, -inf elsewhere) at the others. Never edits `logits`."""
    scores = logits.float().clone()
    scores[..., mask_token_id] = float("-inf")
    log_probs = scores.log_softmax(-1)
    copied = torch.full_like(log_probs, float("-inf")).scatter_(-1, noisy_ids[..., None], 0.0)
    return torch.where((noisy_ids == mask_token_id)[..., None], log_probs, copied)


def sample_categorical(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One draw per row of non-negative, possibly unnormalised `probs` (N, V): the exponential race argmax p / E,
    E ~ Exp(1), in float64 (float32 noise under-samples rare tokens, which moves diffusion LMs' generative perplexity
    materially). Rows go in chunks to bound the float64 memory."""
    draws = []
    for rows in probs.split(max(1, (1 << 24) // max(1, probs.shape[-1]))):
        uniform = torch.rand(rows.shape, device=rows.device, generator=generator, dtype=torch.float64)
        exponential = (-torch.log1p(-uniform)).clamp_min(1e-300)
        draws.append((rows.double() / exponential).argmax(-1))
    return torch.cat(draws) if draws else torch.zeros(0, dtype=torch.long, device=probs.device)


def nucleus_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most probable tokens until their mass reaches `top_p` (at least one), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the token that crosses top_p is kept
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs * keep)
    return kept / kept.sum(-1, keepdim=True)


def reveal_tokens(noisy, logits, stay_masked, mask_token_id: int, generator, top_p: float = 1.0):
    """One ancestral step of absorbing-state diffusion from time t to s < t. A masked position stays masked with
    probability `stay_masked` = move_chance(s) / move_chance(t) (broadcast over (B, T)), else it takes a token drawn
    from the SUBS distribution p(x_0 | x_t) (softmax of `logits` without the mask, optionally nucleus-filtered).
    Unmasked positions are kept (SUBS carry-over). This is the original's q(x_s | x_t) = p(x_0)(m_t - m_s) + m_s [MASK]
    normalised by m_t, drawn in two stages so that only revealed rows need a softmax. Returns the new ids and the
    number of positions revealed."""
    masked = noisy == mask_token_id
    uniform = torch.rand(noisy.shape, device=noisy.device, generator=generator)
    rows = (masked & (uniform >= stay_masked)).nonzero(as_tuple=True)
    scores = logits[rows].float()
    scores[:, mask_token_id] = float("-inf")
    revealed = noisy.clone()
    revealed[rows] = sample_categorical(nucleus_filter(scores.softmax(-1), top_p), generator)
    # how many tokens were revealed, known on the host already (`nonzero` synchronised): the caller's test of whether
    # the denoiser must run again costs no further sync
    return revealed, rows[0].numel()


def reveal_most_confident(noisy, logits, count: int, mask_token_id: int, generator, top_p: float = 1.0):
    """Confidence-ordered unmasking: draw a token for every masked position from the SUBS distribution (optionally
    nucleus-filtered) and reveal, in each row, the `count` draws of highest probability (all of them when fewer are
    masked); the other positions stay masked."""
    masked = noisy == mask_token_id
    rows = masked.nonzero(as_tuple=True)
    scores = logits[rows].float()
    scores[:, mask_token_id] = float("-inf")
    probs = nucleus_filter(scores.softmax(-1), top_p)
    drawn = sample_categorical(probs, generator)
    confidence = torch.full(noisy.shape, float("-inf"), device=noisy.device)
    confidence[rows] = probs.gather(-1, drawn[:, None]).squeeze(-1)
    # Rows with fewer than `count` masks also pick unmasked positions (confidence -inf); `& masked` drops them
    best = confidence.topk(min(count, noisy.shape[1]), dim=1).indices
    chosen = torch.zeros_like(masked).scatter_(1, best, True) & masked
    proposal = noisy.clone()
    proposal[rows] = drawn
    return torch.where(chosen, proposal, noisy)


def reveal_first_hitting(noisy, logits, mask_token_id: int, generator, top_p: float = 1.0):
    """One step of the first-hitting sampler (Zheng et al. 2024, arXiv:2409.02908): in every row that still holds a
    mask, the next position to be unmasked is uniform among its masked ones (each masked token's unmasking time is
    independent and identically distributed), and its token is drawn from the SUBS distribution."""
    masked = noisy == mask_token_id
    keys = torch.rand(noisy.shape, device=noisy.device, generator=generator).masked_fill(~masked, -1.0)
    rows = masked.any(dim=1).nonzero()[:, 0]
    columns = keys.argmax(dim=1)[rows]
    scores = logits[rows, columns].float()
    scores[:, mask_token_id] = float("-inf")
    revealed = noisy.clone()
    revealed[rows, columns] = sample_categorical(nucleus_filter(scores.softmax(-1), top_p), generator)
    return revealed


def first_hitting_times(timesteps, masked_count, generator):
    """The time at which the first of each row's `masked_count` masked tokens is unmasked, going down from
    `timesteps`: t u^(1/n), u ~ U(0, 1), because the mask rate of both schedules is proportional to t."""
    uniform = torch.rand(timesteps.shape, device=timesteps.device, generator=generator)
    uniform = uniform.clamp_min(torch.finfo(torch.float32).tiny)  # t stays > 0
    return torch.where(masked_count > 0, timesteps * uniform ** (1.0 / masked_count.clamp(min=1)), timesteps)


def unmask_in_order(noisy, denoise, sampler: str, tokens_per_step: int, top_p: float, generator, mask_token_id: int,
                    on_step=None):
    """The order-based samplers: call `denoise(ids, timesteps) -> logits` until no mask is left; "confidence" reveals
    the `tokens_per_step` most probable draws of each row per call, "first_hitting" one uniformly chosen token per row
    at its first-hitting time."""
    timesteps = torch.ones(noisy.shape[0], device=noisy.device)
    while True:
        masked_count = (noisy == mask_token_id).sum(dim=1)
        if not bool(masked_count.any()):
            return noisy
        if sampler == "first_hitting":
            timesteps = first_hitting_times(timesteps, masked_count, generator)
            noisy = reveal_first_hitting(noisy, denoise(noisy, timesteps), mask_token_id, generator, top_p)
        else:
            noisy = reveal_most_confident(noisy, denoise(noisy, timesteps), tokens_per_step, mask_token_id, generator,
                                          top_p)
        if on_step is not None:
            on_step()


SAMPLERS = ("ddpm", "ddpm_cache", "confidence", "first_hitting")


def check_sampler_options(sampler, num_steps, tokens_per_step, top_p, time_conditioning: bool):
    """The sampler to run (None: ddpm_cache, or ddpm for a time-conditioned model, whose output changes with t) and
    its tokens per step, after refusing options that do not belong to it."""
    if sampler is None:
        sampler = "ddpm" if time_conditioning else "ddpm_cache"
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if sampler == "ddpm_cache" and time_conditioning:
        raise ValueError("ddpm_cache reuses the denoiser's output across steps: only valid without time "
                         "conditioning; use sampler='ddpm'")
    if sampler in ("ddpm", "ddpm_cache"):
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        if tokens_per_step is not None:
            raise ValueError(f"tokens_per_step belongs to the confidence sampler; {sampler} reveals by num_steps")
        return sampler, None
    if num_steps is not None:
        raise ValueError(f"num_steps belongs to the ancestral samplers: {sampler} runs until every mask is revealed "
                         "(first_hitting one token per row and step; confidence `tokens_per_step`)")
    if sampler == "first_hitting":
        if tokens_per_step is not None:
            raise ValueError("first_hitting reveals one token per row and step; tokens_per_step is the confidence "
                             "sampler's")
        return sampler, 1
    if time_conditioning:
        raise ValueError("the confidence sampler follows no noise schedule, so a time-conditioned model has no t to "
                         "be given; use ddpm or first_hitting")
    tokens_per_step = 1 if tokens_per_step is None else tokens_per_step
    if not isinstance(tokens_per_step, int) or tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be an integer >= 1, got {tokens_per_step!r}")
    return sampler, tokens_per_step


def generation_batch(input_ids, attention_mask, max_new_tokens, num_samples: int, length, config, device):
    """The (ids, attention mask or None) that `sample` starts from. Without `input_ids`: `num_samples` rows of
    `length` mask ids. With them: every mask id is to be generated and every other token is kept; `attention_mask`
    0 marks padding, which is never attended, never generated and returned as given; `max_new_tokens` mask ids go
    right after each row's last real token (its right padding moves behind them, new padding is
    `config.pad_token_id`); each row is repeated `num_samples` times."""
    mask_id = config.mask_token_id
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if input_ids is None:
        if attention_mask is not None or max_new_tokens is not None:
            raise ValueError("attention_mask and max_new_tokens describe input_ids, which were not given")
        length = config.max_position_embeddings if length is None else length
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an integer >= 1, got {length!r}")
        return torch.full((num_samples, length), mask_id, dtype=torch.long, device=device), None
    if length is not None:
        raise ValueError("length is the size of unconditional samples; with input_ids their width (and "
                         "max_new_tokens) sets it")
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a tensor of shape (batch, seq_len), got {type(input_ids).__name__}")
    check_token_ids(input_ids, config.vocab_size, float("inf"), True, "input_ids")
    ids = input_ids.to(device=device, dtype=torch.long)
    real = None
    if attention_mask is not None:
        check_attention_mask(attention_mask, ids.shape, True)
        real = attention_mask.to(device).bool()
        if bool((ids == mask_id)[~real].any()):
            raise ValueError(f"a padding position (attention_mask 0) holds the mask id {mask_id}: padding is returned "
                             "as given, so it would keep the mask; mark positions to generate as real tokens")
    if max_new_tokens is not None:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        ids, real = append_masks(ids, real, max_new_tokens, mask_id, config.pad_token_id)
    if not bool((ids == mask_id).any()):
        raise ValueError(f"input_ids hold no mask id ({mask_id}) and max_new_tokens is not set: nothing to generate")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(f"{ids.shape[1]} positions exceed max_position_embeddings ({config.max_position_embeddings})")
    ids = ids.repeat_interleave(num_samples, dim=0)
    if real is not None:
        real = None if bool(real.all()) else real.repeat_interleave(num_samples, dim=0)
    return ids, real


def append_masks(ids, real, count: int, mask_token_id: int, pad_token_id):
    """Each row up to its last real token, then `count` mask ids, then padding to the widest row."""
    batch, width = ids.shape
    positions = torch.arange(width, device=ids.device)
    ends = torch.full((batch,), width, device=ids.device) if real is None else \
        torch.where(real, positions + 1, 0).amax(dim=1)
    new_width = int(ends.max()) + count
    if bool((ends + count < new_width).any()) and pad_token_id is None:
        raise ValueError("rows of different lengths are padded after their new tokens, but config.pad_token_id is "
                         "not set")
    positions = torch.arange(new_width, device=ids.device)
    kept = positions[None, :] < ends[:, None]
    new = kept.logical_not() & (positions[None, :] < (ends + count)[:, None])
    grown = torch.full((batch, new_width), -1 if pad_token_id is None else pad_token_id, dtype=ids.dtype,
                       device=ids.device)
    grown[:, :width] = torch.where(kept[:, :width], ids, grown[:, :width])
    grown[new] = mask_token_id
    grown_real = kept | new
    if real is not None:
        grown_real[:, :width] &= real | ~kept[:, :width]
    return grown, grown_real


class CudaGraphedCall:
    """`function(*inputs)` captured once as a CUDA graph and replayed on new inputs of the same shapes, copied into
    the captured ones. At sampling's small batches a denoiser call costs more in launching its kernels one by one
    from Python than in running them; a replay launches them at once. The result is the graph's output tensor,
    overwritten by the next call. The model's checks that read values must be off (no host sync while capturing)."""

    def __init__(self, function, *inputs):
        self.inputs = tuple(value.clone() for value in inputs)
        device_type = self.inputs[0].device.type
        # autocast's cache of cast weights cannot live inside a graph
        autocast = torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                                  enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:
            for _ in range(2):  # warm-up outside the graph: library handles and workspaces are created here
                function(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), autocast:
            self.output = function(*self.inputs)

    def __call__(self, *inputs):
        for captured, value in zip(self.inputs, inputs):
            captured.copy_(value)
        self.graph.replay()
        return self.output


def uses_cuda_graphs(model, requested: bool) -> bool:
    """Whether `sample` captures its denoiser calls: asked for, on a CUDA device, and with an attention whose mask is
    a tensor (flex attention builds its block mask on the host at every call)."""
    return bool(requested) and model.device.type == "cuda" and model.config._attn_implementation in ("eager", "sdpa")


# Copied from modeling.device_value_checks
@contextmanager
def device_value_checks(model, enabled: bool):
    """Within the block, turn on or off the range checks of ids and labels that hubzoo models run on accelerator
    tensors (`check_values_on_device`: each is a host-device sync); for callers that checked the values on the CPU
    already. The previous settings are restored on exit. Models without the switch are left alone."""
    switches = [module for module in model.modules() if hasattr(module, "check_values_on_device")]
    saved = [module.check_values_on_device for module in switches]
    for module in switches:
        module.check_values_on_device = enabled
    try:
        yield
    finally:
        for module, value in zip(switches, saved):
            module.check_values_on_device = value


def check_clean_labels(labels: torch.Tensor, noisy_ids: torch.Tensor, config, check_values: bool) -> None:
    """`labels` of a NELBO: x_0 with the shape of x_t, clean ids (never the mask) or -100."""
    if noisy_ids is None or labels.shape != noisy_ids.shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match input_ids "
                         f"{None if noisy_ids is None else tuple(noisy_ids.shape)}")
    outside = (labels < 0) & (labels != -100) | (labels >= config.vocab_size) | (labels == config.mask_token_id)
    if check_values and bool(outside.any()):
        raise ValueError(f"labels must be clean ids in [0, {config.vocab_size}) other than the mask id "
                         f"{config.mask_token_id}, or -100")


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, max_length: int, check_values: bool, name: str):
    if input_ids is None:
        raise ValueError(f"{name} is required")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input_ids.shape)}): a batch needs at least one sequence of "
                         "at least one token")
    if input_ids.shape[1] > max_length:
        raise ValueError(f"Sequence length {input_ids.shape[1]} of {name} exceeds max_position_embeddings "
                         f"({max_length}); truncate the input or sample semi-autoregressively.")
    if check_values:
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one host-device sync, not two
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} contain ids outside [0, {vocab_size}) (min {low}, max {high}); the tokenizer "
                             "does not match this model's vocabulary.")


def check_inputs_embeds(inputs_embeds: torch.Tensor, hidden_size: int, max_length: int) -> None:
    """`inputs_embeds` (B, T, hidden_size), floating, in place of the embedded `input_ids`."""
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size or inputs_embeds.shape[:2].numel() == 0:
        raise ValueError(f"inputs_embeds must have shape (batch, seq_len, hidden_size={hidden_size}) with at least one "
                         f"token, got {tuple(inputs_embeds.shape)}")
    if not torch.is_floating_point(inputs_embeds):
        raise ValueError(f"inputs_embeds must be a floating tensor, got {inputs_embeds.dtype}")
    if inputs_embeds.shape[1] > max_length:
        raise ValueError(f"Sequence length {inputs_embeds.shape[1]} of inputs_embeds exceeds max_position_embeddings "
                         f"({max_length}); truncate the input or sample semi-autoregressively.")


def check_attention_mask(attention_mask: Optional[torch.Tensor], shape, check_values: bool) -> None:
    """`attention_mask` (B, T) of the `shape` of the input ids, 1 = real token. A row of zeros leaves its sequence
    nothing to attend to: refused, not averaged over padding."""
    if attention_mask is None:
        return
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match the input shape "
                         f"{tuple(shape)}")
    if check_values and not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError("attention_mask has a row of zeros: that sequence has no real token to attend to")


def check_timesteps(timesteps: torch.Tensor, shapes, check_values: bool, closed_at_one: bool = True) -> None:
    """`timesteps`: a floating tensor of one of `shapes`; every t in (0, 1] (in (0, 1) when not `closed_at_one`). t is
    the mask rate of the noise draw, so at most 1, and the NELBO weight 1/t is infinite at t = 0."""
    interval = "(0, 1]" if closed_at_one else "(0, 1)"
    if not torch.is_floating_point(timesteps):
        raise ValueError(f"timesteps must be a floating tensor of t in {interval}, got {timesteps.dtype}")
    if tuple(timesteps.shape) not in shapes:
        raise ValueError(f"timesteps shape {tuple(timesteps.shape)} must be {' or '.join(map(str, shapes))}")
    if check_values:
        low, high = torch.stack(torch.aminmax(timesteps.float())).tolist()  # NaN fails both comparisons
        if not (low > 0 and (high <= 1 if closed_at_one else high < 1)):
            raise ValueError(f"timesteps must lie in {interval} (t is a mask rate; the NELBO weight 1/t is infinite at "
                             f"t = 0), got min {low}, max {high}")


# ---- shared DiT (end) ----


def build_block_diffusion_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """The (2L, 2L) training mask over x_t (+) x_0, True = may attend: block-diagonal within each half, plus x_t block
    b -> x_0 blocks < b, plus x_0 block b -> x_0 blocks <= b."""
    # Integer comparisons only: inductor (torch 2.13) cannot bound `==` between boolean tensors
    position = torch.arange(2 * length, device=device)
    half = torch.div(position, length, rounding_mode="floor")  # 0: x_t, 1: x_0
    block = (position - half * length) // block_size
    half_q, half_k, block_q, block_k = half[:, None], half[None, :], block[:, None], block[None, :]
    block_diagonal = (block_q == block_k) & (half_q == half_k)
    offset_block_causal = (block_q > block_k) & (half_q == 0) & (half_k == 1)
    block_causal = (block_q >= block_k) & (half_q == 1) & (half_k == 1)
    return block_diagonal | offset_block_causal | block_causal


@functools.lru_cache(maxsize=8)
def _cached_block_diffusion_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    with torch.inference_mode(False):  # a mask made under inference mode could not be used by a later training step
        return build_block_diffusion_mask(length, block_size, device)


def block_diffusion_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """`build_block_diffusion_mask`, cached per (length, block size, device) in eager mode, so a training step neither
    rebuilds it nor copies it to the device. While torch.compile / torch.export trace, it is a fake tensor: built in the
    graph, never cached (a later eager call would find it)."""
    if torch.compiler.is_compiling():
        return build_block_diffusion_mask(length, block_size, device)
    return _cached_block_diffusion_mask(length, block_size, device)


class Bd3lmKVCache:
    """Rotated keys and values of the clean blocks generated so far, one (keys, values) pair per layer, each
    (B, heads, cached length, head_dim). Filled by `forward(..., update_cache=True)`."""

    def __init__(self):
        self.layers: List[Tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0


@dataclass
class Bd3lmModelOutput(ModelOutput):
    """`last_hidden_state` of the x_t positions before the output layer; `conditioning` is the adaLN input."""

    last_hidden_state: Optional[torch.FloatTensor] = None
    conditioning: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    kv_cache: Optional[Bd3lmKVCache] = None


@dataclass
class Bd3lmMaskedDiffusionLMOutput(MaskedLMOutput):
    kv_cache: Optional[Bd3lmKVCache] = None


class Bd3lmPreTrainedModel(PreTrainedModel):
    config_class = Bd3lmConfig
    base_model_prefix = "bd3lm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DiTBlock"]
    # Attention runs through transformers' attention functions with a boolean mask (see DiTBlock): eager, sdpa and
    # flex_attention carry the block-diffusion mask; flash attention takes padding masks only.
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False
    _supports_attention_backend = False  # kwargs are not passed through to the attention layer, no TP plan
    _can_compile_fullgraph = True  # the host-side value checks are skipped while tracing (_values_checked)
    # Range checks of ids read tensor values: on an accelerator each is a host-device sync. hubzoo's trainer checks
    # every batch on the CPU before it moves and turns this off while it trains; CPU tensors are always checked.
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
        init_dit_weights(module, self.config)
        if isinstance(module, Bd3lmForMaskedDiffusionLM):
            nn.init.constant_(module.sampling_eps_min, self.config.sampling_eps_min)
            nn.init.constant_(module.sampling_eps_max, self.config.sampling_eps_max)


class Bd3lmModel(Bd3lmPreTrainedModel):
    """The DiT trunk with block-structured attention."""

    # Copied from modeling.mdlm.modeling_mdlm.MdlmModel.__init__ with Mdlm->Bd3lm
    def __init__(self, config: Bd3lmConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.time_embedder = DiTTimestepEmbedder(config)
        self.layers = nn.ModuleList(DiTBlock(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def conditioning_sigma(self, batch_size: int, device, timesteps=None, sigma=None) -> torch.Tensor:
        """The (B,) noise level the blocks see: zeros unless `time_conditioning`; then `sigma`, or min(-log(1 - t),
        -log(noise_eps)) of the first block's t (the original's `_sigma_from_p`)."""
        if not self.config.time_conditioning:
            return torch.zeros(batch_size, device=device)
        if sigma is None:
            if timesteps is None:
                raise ValueError("This model is time-conditioned (config.time_conditioning): pass timesteps or sigma")
            first = timesteps.reshape(batch_size, -1)[:, 0].float()
            sigma = torch.clamp(-torch.log1p(-first), max=-math.log(self.config.noise_eps))
        if sigma.numel() != batch_size:
            raise ValueError(f"sigma must hold one value per sequence ({batch_size}), got {tuple(sigma.shape)}")
        return sigma.reshape(batch_size)

    def _attention_layout(self, input_ids, clean_ids, attention_mask, kv_cache, length, device):
        """Token ids fed to the blocks (None: `inputs_embeds` are), their rotary cos/sin tables, and the boolean
        attention mask (B or 1, 1, T, T_keys)."""
        config = self.config
        cos, sin = rotary_tables(config.max_position_embeddings, config.hidden_size // config.num_attention_heads,
                                 config.rotary_base, device)
        if clean_ids is not None:  # training pass over x_t (+) x_0, both halves at positions 0..L-1
            cos, sin = cos[:length].repeat(2, 1), sin[:length].repeat(2, 1)
            mask = block_diffusion_mask(length, config.block_size, device)[None, None]
            ids = torch.cat((input_ids, clean_ids), dim=1)
            keys_real = None if attention_mask is None else attention_mask.bool().repeat(1, 2)
        else:  # generation pass: the given blocks attend to themselves block-causally and to every cached position
            offset = kv_cache.length if kv_cache is not None else 0
            cos, sin = cos[offset:offset + length], sin[offset:offset + length]
            positions = torch.arange(offset, offset + length, device=device)
            key_positions = torch.arange(offset + length, device=device)
            mask = (key_positions[None, :] // config.block_size <= positions[:, None] // config.block_size)[None, None]
            ids = input_ids
            keys_real = None if attention_mask is None else F.pad(attention_mask.bool(), (offset, 0), value=True)
        if keys_real is not None:
            mask = mask & keys_real[:, None, None, :]
        return ids, (cos, sin), mask

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        clean_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        timesteps: Optional[torch.Tensor] = None,
        sigma: Optional[torch.Tensor] = None,
        kv_cache: Optional[Bd3lmKVCache] = None,
        update_cache: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
    ):
        """Training pass: `input_ids` = x_t and `clean_ids` = x_0, same shape. Generation pass (no `clean_ids`):
        `input_ids` are whole blocks, the last one possibly noisy, continuing after `kv_cache` if given; with
        `update_cache=True` their keys and values are appended to it (do this once a block is clean).
        `inputs_embeds` (B, T, hidden_size) may replace `input_ids` in the generation pass only: the training pass
        embeds x_t and x_0 together, and the NELBO reads the mask positions of the x_t ids.
        `attention_mask`: 1 = real token, 0 = padding (never attended); it covers `input_ids` only.
        `hidden_states` (with `output_hidden_states`) are the tensors the blocks pass on: in the training pass
        (B, 2L, hidden) over x_t (+) x_0, whose first L positions are x_t's. `output_attentions`: each block's
        attention probabilities over the same layout (eager attention only)."""
        config = self.config
        offset = kv_cache.length if kv_cache is not None else 0
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None and clean_ids is not None:
            raise ValueError("the training pass (clean_ids given) takes input_ids, not inputs_embeds: x_t and x_0 are "
                             "embedded together and the NELBO reads which x_t ids are the mask")
        if input_ids is not None:
            check_token_ids(input_ids, config.vocab_size, config.max_position_embeddings - offset,
                            self._values_checked(input_ids), "input_ids")
        else:
            check_inputs_embeds(inputs_embeds, config.hidden_size, config.max_position_embeddings - offset)
        inputs = input_ids if input_ids is not None else inputs_embeds
        batch, length = inputs.shape[:2]
        if clean_ids is not None:
            if clean_ids.shape != input_ids.shape:
                raise ValueError(f"clean_ids shape {tuple(clean_ids.shape)} does not match input_ids shape "
                                 f"{tuple(input_ids.shape)}")
            if kv_cache is not None or update_cache:
                raise ValueError("the training pass (clean_ids given) takes no KV cache")
            check_token_ids(clean_ids, config.vocab_size, config.max_position_embeddings,
                            self._values_checked(clean_ids), "clean_ids")
        if update_cache and kv_cache is None:
            raise ValueError("update_cache=True needs a Bd3lmKVCache in kv_cache")
        # Cached blocks are real keys of every row: only a row without a cache can be left nothing to attend to
        check_attention_mask(attention_mask, (batch, length), self._values_checked(inputs) and offset == 0)
        if timesteps is not None:
            check_timesteps(timesteps, [(batch,), (batch, length)], self._values_checked(timesteps))
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        ids, (cos, sin), mask = self._attention_layout(input_ids, clean_ids, attention_mask, kv_cache, length,
                                                       inputs.device)
        conditioning = F.silu(self.time_embedder(self.conditioning_sigma(batch, inputs.device, timesteps, sigma)))
        hidden = self.embed_tokens(ids) if inputs_embeds is None else inputs_embeds
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        new_cache = []
        for index, layer in enumerate(self.layers):
            past = kv_cache.layers[index] if kv_cache is not None and kv_cache.layers else None
            # positional arguments: the layer checkpoints itself (GradientCheckpointingLayer) when enabled
            hidden, key, value, probs = layer(hidden, cos, sin, conditioning, mask, past, output_attentions)
            new_cache.append((key, value))
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
            if output_attentions:
                all_attentions = all_attentions + (probs,)
        if update_cache:
            kv_cache.layers = new_cache
        last = hidden if clean_ids is None else hidden[:, :length]  # the training pass: x_t's half
        output = Bd3lmModelOutput(last_hidden_state=last, conditioning=conditioning, hidden_states=all_hidden,
                                  attentions=all_attentions, kv_cache=kv_cache)
        return output if return_dict in (None, True) else output.to_tuple()


class Bd3lmForMaskedDiffusionLM(Bd3lmPreTrainedModel):
    """The BD3-LM denoiser with its output layer: logits of x_0 given x_t, the block NELBO for a given noise draw, the
    trained sampling interval (buffers), and a KV-cached block sampler (`sample`)."""

    _tied_weights_keys = {"output_layer.lm_head.weight": "bd3lm.embed_tokens.weight"}

    def __init__(self, config: Bd3lmConfig):
        super().__init__(config)
        self.bd3lm = Bd3lmModel(config)
        self.output_layer = DiTOutputLayer(config)
        # Persistent: a fine-tune from a checkpoint continues with the interval it was trained with, and an export
        # carries it. Values come from the checkpoint when it has them (see `sampling_interval`).
        self.register_buffer("sampling_eps_min", torch.tensor(float(config.sampling_eps_min), dtype=torch.float32))
        self.register_buffer("sampling_eps_max", torch.tensor(float(config.sampling_eps_max), dtype=torch.float32))
        self.post_init()

    def _apply(self, fn, recurse=True):
        """`.to(bfloat16)` / `.half()` cast every floating buffer; the interval stays float32 (bf16 would turn 0.3 into
        0.30078)."""
        interval = (self.sampling_eps_min.detach().clone(), self.sampling_eps_max.detach().clone())
        result = super()._apply(fn, recurse)
        if self.sampling_eps_min.dtype != torch.float32:
            device = self.sampling_eps_min.device
            self.sampling_eps_min, self.sampling_eps_max = (value.to(device) for value in interval)
        return result

    def get_input_embeddings(self):
        return self.bd3lm.embed_tokens

    def set_input_embeddings(self, value):
        self.bd3lm.embed_tokens = value

    def get_output_embeddings(self):
        return self.output_layer.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.output_layer.lm_head = new_embeddings

    @property
    def sampling_interval(self) -> Tuple[float, float]:
        """The trained (sampling_eps_min, sampling_eps_max) from the buffers, validated (0 < min < max <= 1)."""
        interval = (float(self.sampling_eps_min), float(self.sampling_eps_max))
        validate_sampling_interval(*interval)
        return interval

    def set_sampling_interval(self, eps_min: float, eps_max: float) -> None:
        """Set the buffers and the config together (what the clipped-schedule search of the original writes)."""
        validate_sampling_interval(eps_min, eps_max)
        self.sampling_eps_min.fill_(eps_min)
        self.sampling_eps_max.fill_(eps_max)
        self.config.sampling_eps_min, self.config.sampling_eps_max = float(eps_min), float(eps_max)

    def noise_schedule(self, timesteps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(move_chance, NELBO weight) of the log-linear block schedule: a token of a block with time t is masked with
        probability exactly t, and its NELBO weight is 1/t."""
        timesteps = timesteps.float()
        return timesteps, 1.0 / timesteps

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        clean_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        timesteps: Optional[torch.Tensor] = None,
        sigma: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        kv_cache: Optional[Bd3lmKVCache] = None,
        update_cache: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        logits_to_keep: int = 0,
    ):
        """See `Bd3lmModel.forward` (`inputs_embeds`: generation pass only, so never with `labels`). `logits_to_keep`:
        the logits of the last that many positions only (0: all), as transformers' causal LMs; not with `labels`. `labels`: x_0
        with -100 at positions left out (padding; BOS in evaluation when `ignore_bos`); with `timesteps` (per token
        (B, L), or per sequence (B,)) the loss is this draw's block NELBO: sum over masked positions of (1/t) *
        -log p(x_0 | x_t, x_0 of earlier blocks), divided by the number of labelled positions. Without `clean_ids`,
        labels supply x_0 for the training pass (input ids at -100)."""
        if labels is not None:
            if input_ids is None:
                raise ValueError("labels need input_ids: the training pass embeds x_t and x_0 together and the NELBO "
                                 "reads which x_t ids are the mask, which inputs_embeds do not show")
            check_clean_labels(labels, input_ids, self.config, self._values_checked(labels))
            if timesteps is None:
                raise ValueError("the NELBO needs timesteps: the t of each token's block, shape (batch, seq_len) (or "
                                 "one per sequence, (batch,))")
        if labels is not None and logits_to_keep:
            raise ValueError("logits_to_keep leaves positions without logits: the NELBO of labels needs them all")
        if labels is not None and clean_ids is None:
            clean_ids = torch.where(labels == -100, input_ids, labels)
        outputs = self.bd3lm(input_ids, clean_ids, attention_mask, timesteps, sigma, kv_cache, update_cache,
                             output_hidden_states, return_dict=True, inputs_embeds=inputs_embeds,
                             output_attentions=output_attentions)
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.output_layer(hidden, outputs.conditioning)
        loss = None
        if labels is not None:
            loss = self._nelbo(logits, input_ids, labels, timesteps)
        output = Bd3lmMaskedDiffusionLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                              attentions=outputs.attentions, kv_cache=outputs.kv_cache)
        return output if return_dict in (None, True) else output.to_tuple()

    def _nelbo(self, logits, noisy_ids, labels, timesteps) -> torch.Tensor:
        weights = self.noise_schedule(timesteps.reshape(labels.shape[0], -1))[1]
        terms = masked_diffusion_nelbo(logits, noisy_ids, labels, weights, self.config.mask_token_id)
        return terms.sum() / (labels != -100).sum().clamp(min=1)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int = 1,
        length: Optional[int] = None,
        num_steps: Optional[int] = None,
        *,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        max_new_tokens: Optional[int] = None,
        sampler: Optional[str] = None,
        tokens_per_step: Optional[int] = None,
        top_p: float = 1.0,
        use_cache: bool = True,
        cuda_graphs: bool = True,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        progress: bool = False,
    ) -> torch.LongTensor:
        """Generate block by block, left to right: fill every mask id of `input_ids`, keeping every other token as
        given, or, without `input_ids`, draw `num_samples` sequences of `length` tokens (a multiple of `block_size`;
        default `max_position_embeddings`) from all-mask. The result never contains the mask id.

        Blocks before the first block holding a mask are context (cached); a block with masks is denoised given the
        blocks before it and its own kept tokens; later kept tokens are seen only when their block is reached (the
        attention is block-causal). `attention_mask`: 0 marks padding, which must follow a row's real tokens (pad on
        the right), is never attended and is returned as given. `max_new_tokens`: mask ids appended after each row's
        last real token. A width that is not whole blocks is padded inside and returned at its own width.
        `sampler`: as MDLM's `sample`, within each block: `"ddpm"`/`"ddpm_cache"` (`num_steps` ancestral steps per
        block, default `block_size`), `"confidence"` (`tokens_per_step`), `"first_hitting"`. `top_p`: nucleus
        filtering of p(x_0 | x_t). `use_cache`: the keys and values of finished blocks are kept (exact); off, every
        call re-reads the whole prefix. `cuda_graphs`: on a CUDA device (eager or sdpa attention) the cached block
        call is captured once and replayed. Unconditional samples of a model trained with `ignore_bos` start with
        `config.bos_token_id` (training never masks position 0). Time-conditioned models sample without the cache:
        cached clean blocks would keep the conditioning of the step they were cached at, while training conditions
        both halves alike. Reproducible through `generator` (on the model's device) or `seed`."""
        config = self.config
        block_size = config.block_size
        if use_cache and config.time_conditioning:
            raise ValueError("a time-conditioned BD3-LM samples with use_cache=False (see the docstring)")
        sampler, tokens_per_step = check_sampler_options(sampler, num_steps, tokens_per_step, top_p,
                                                         config.time_conditioning)
        num_steps = block_size if num_steps is None else num_steps
        if input_ids is None and length is not None and length % block_size:
            raise ValueError(f"length must be a multiple of block_size ({block_size}), got {length}")
        device = self.device
        ids, real = generation_batch(input_ids, attention_mask, max_new_tokens, num_samples, length, config, device)
        if input_ids is None and config.ignore_bos:
            ids[:, 0] = self._bos_token_id()
        if real is not None and bool((real[:, 1:] & ~real[:, :-1]).any()):
            raise ValueError("BD3-LM generates left to right: padding (attention_mask 0) must follow every real token "
                             "of its row; pad on the right")
        width = ids.shape[1]
        whole = -(-width // block_size) * block_size
        if whole > width:  # padding to whole blocks, cut off at the end
            real = torch.ones_like(ids, dtype=torch.bool) if real is None else real
            ids, real = F.pad(ids, (0, whole - width), value=0), F.pad(real, (0, whole - width), value=False)
        if whole > config.max_position_embeddings:
            raise ValueError(f"{width} positions, in whole blocks {whole}, exceed max_position_embeddings "
                             f"({config.max_position_embeddings})")
        if generator is None:
            generator = torch.Generator(device=device).manual_seed(0 if seed is None else seed)
        options = dict(sampler=sampler, num_steps=num_steps, tokens_per_step=tokens_per_step, top_p=top_p,
                       generator=generator)
        was_training = self.training
        self.eval()
        with device_value_checks(self, False):  # the inputs were checked above
            cache = _CachedBlocks(self, ids, real, cuda_graphs) if use_cache else None
            for index in tqdm(range(whole // block_size), disable=not progress, desc=f"BD3-LM {sampler}"):
                span = slice(index * block_size, (index + 1) * block_size)
                if bool((ids[:, span] == config.mask_token_id).any()):
                    denoise = cache.denoiser(index) if use_cache else self._uncached_denoiser(ids, real, index)
                    ids[:, span] = self._denoise_block(ids[:, span], denoise, **options)
                if use_cache:
                    cache.commit(index, ids[:, span])
        self.train(was_training)
        return ids[:, :width]

    def _bos_token_id(self) -> int:
        if self.config.bos_token_id is None:
            raise ValueError("ignore_bos: the model was trained with a clean first token, but config.bos_token_id is "
                             "not set; set it, or pass input_ids that start with it")
        return self.config.bos_token_id

    def _uncached_denoiser(self, ids, real, index: int):
        """`(block ids, timesteps) -> block logits` re-reading blocks 0..index-1 of `ids` at every call."""
        end = (index + 1) * self.config.block_size
        context = ids[:, :end - self.config.block_size].clone()
        mask = None if real is None else real[:, :end]

        def denoise(block, timesteps):
            return self(input_ids=torch.cat((context, block), dim=1), attention_mask=mask, timesteps=timesteps,
                        logits_to_keep=block.shape[1]).logits

        return denoise

    def _denoise_block(self, noisy, denoise, sampler, num_steps, tokens_per_step, top_p, generator) -> torch.Tensor:
        mask_id = self.config.mask_token_id
        if sampler in ("confidence", "first_hitting"):
            return unmask_in_order(noisy, denoise, sampler, tokens_per_step, top_p, generator, mask_id)
        times = torch.linspace(1.0, 0.0, num_steps + 1, device=noisy.device)
        logits = None
        for step in range(num_steps):
            if logits is None:
                logits = denoise(noisy, times[step].expand(noisy.shape[0]))
            noisy, revealed = reveal_tokens(noisy, logits, times[step + 1] / times[step], mask_id, generator, top_p)
            if sampler == "ddpm" or revealed:
                logits = None
        return noisy


class _CachedBlocks:
    """The KV cache of `sample`: the rotated keys and values of every finished block in buffers as wide as the
    samples, written in place, so that a call (one block of ids in, its logits out) always has the same shapes and,
    on a GPU, is captured once as a CUDA graph and replayed. A call attends to the finished blocks and the block
    itself through a boolean mask (B, 1, 1, width + block), so no position beyond them is read. Exact: a block's keys
    are computed once, from the clean block, as `Bd3lmKVCache` holds them."""

    def __init__(self, model, ids, real, cuda_graphs: bool):
        config = model.config
        self.model, self.block_size = model, config.block_size
        batch, self.width = ids.shape
        heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        device = ids.device
        # The keys' dtype is the projections' output: the autocast dtype under autocast, else the weights'
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else model.dtype
        layers = range(config.num_hidden_layers)
        self.keys = [torch.zeros(batch, heads, self.width, head_dim, dtype=dtype, device=device) for _ in layers]
        self.values = [torch.zeros_like(self.keys[0]) for _ in layers]
        self.block_keys = [torch.zeros(batch, heads, self.block_size, head_dim, dtype=dtype, device=device)
                           for _ in layers]
        self.block_values = [torch.zeros_like(self.block_keys[0]) for _ in layers]
        self.real = torch.ones_like(ids, dtype=torch.bool) if real is None else real
        self.visible = torch.zeros(batch, 1, 1, self.width + self.block_size, dtype=torch.bool, device=device)
        self.cos_table, self.sin_table = rotary_tables(config.max_position_embeddings, head_dim, config.rotary_base,
                                                       device)
        self.cos, self.sin = self.cos_table[:self.block_size].clone(), self.sin_table[:self.block_size].clone()
        self.placed = None
        self._place(0)
        example = ids[:, :self.block_size]
        self.call = CudaGraphedCall(self._forward, example) if uses_cuda_graphs(model, cuda_graphs) else self._forward

    def _forward(self, block):
        trunk = self.model.bd3lm
        conditioning = F.silu(trunk.time_embedder(trunk.conditioning_sigma(block.shape[0], block.device)))
        hidden = trunk.embed_tokens(block)
        for index, layer in enumerate(trunk.layers):
            past = (self.keys[index], self.values[index])
            hidden, key, value, _ = layer(hidden, self.cos, self.sin, conditioning, self.visible, past, False)
            self.block_keys[index].copy_(key[:, :, -self.block_size:])
            self.block_values[index].copy_(value[:, :, -self.block_size:])
        return self.model.output_layer(hidden, conditioning)

    def _place(self, index: int) -> None:
        """Point the call at block `index`: its rotary positions, and the finished blocks before it as keys."""
        if index == self.placed:  # a denoised block is committed at the place it was denoised at
            return
        self.placed = index
        start = index * self.block_size
        self.cos.copy_(self.cos_table[start:start + self.block_size])
        self.sin.copy_(self.sin_table[start:start + self.block_size])
        finished = torch.arange(self.width, device=self.real.device) < start
        self.visible[:, 0, 0, :self.width] = finished & self.real
        self.visible[:, 0, 0, self.width:] = self.real[:, start:start + self.block_size]

    def denoiser(self, index: int):
        self._place(index)
        return lambda block, timesteps: self.call(block)

    def commit(self, index: int, block) -> None:
        """Cache the keys and values of the finished (clean) block `index`."""
        self._place(index)
        self.call(block)
        span = slice(index * self.block_size, (index + 1) * self.block_size)
        for keys, values, block_keys, block_values in zip(self.keys, self.values, self.block_keys,
                                                          self.block_values):
            keys[:, :, span] = block_keys
            values[:, :, span] = block_values

__all__ = [
    "Bd3lmPreTrainedModel",
    "Bd3lmModel",
    "Bd3lmForMaskedDiffusionLM",
    "Bd3lmKVCache",
    "block_diffusion_mask",
]
