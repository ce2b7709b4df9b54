"""LatentWire: a byte encoder and M learned latent queries that condition several frozen decoder LMs through one small
adapter each (see configuration_latent_wire.py). Self-contained: torch, public transformers, the sibling config.

The wire is the only module: the decoders are attached with `attach_decoder` (or `load_decoders`), kept outside the
module tree, frozen, and never saved. What makes the original's failures impossible here:
* byte padding is never attended, by the encoder nor by the latent queries (the latents of a row do not depend on
  its batch-mates);
* `decoder_inputs` builds [prefix ⊕ (BOS) ⊕ anchor ⊕ continuation] once, for training and generation alike, with
  labels aligned to the inputs (the decoder shifts them, once), -100 on prefix, anchor and padding, a zero attention
  mask on padding and explicit positions;
* a decoder other than the one the wire was calibrated and trained with (embedding RMS, anchor ids, tokenizer size)
  is refused at attach.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from .configuration_latent_wire import LatentWireConfig


@dataclass
class LatentWireOutput(ModelOutput):
    """`last_hidden_state`: the latents (B, M, d_z); `prefixes`: one (B, M, hidden_size of the decoder) soft prefix
    per decoder entry of the config, in its order; `hidden_states`: the byte encoder's embeddings and layer outputs."""

    last_hidden_state: Optional[torch.Tensor] = None
    prefixes: Optional[tuple] = None
    hidden_states: Optional[tuple] = None


def sinusoidal_positions(length: int, width: int, device, dtype) -> torch.Tensor:
    """(length, width) sine/cosine positions (Vaswani et al.), computed, never stored: nothing to miss at load."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : width // 2]
    return table.to(dtype)


class WireAttention(nn.Module):
    """Multi-head attention of `queries` over `memory`, where `key_mask` (B, Tk; True = real) hides padding."""

    def __init__(self, config: LatentWireConfig):
        super().__init__()
        width = config.hidden_size
        self.num_heads, self.dropout = config.num_attention_heads, config.dropout
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, queries, memory, key_mask):
        def heads(x):
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(queries)), heads(self.k_proj(memory)), heads(self.v_proj(memory))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :],
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class WireMLP(nn.Sequential):
    def __init__(self, config: LatentWireConfig):
        super().__init__(nn.Linear(config.hidden_size, config.intermediate_size), nn.GELU(),
                         nn.Linear(config.intermediate_size, config.hidden_size))


class WireBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x) over memory), then x + MLP(norm(x)). Self-attention when memory is None."""

    def __init__(self, config: LatentWireConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = WireAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = WireMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden, key_mask, memory=None):
        normed = self.attention_norm(hidden)
        hidden = hidden + self.dropout(self.attention(normed, normed if memory is None else memory, key_mask))
        return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))


class DecoderAdapter(nn.Module):
    """Latents (B, M, d_z) -> prefix embeddings (B, M, D): LayerNorm, a linear map, then each prefix vector rescaled
    to the decoder's input-embedding RMS times a learnable scale, so that the prefix starts at the norm the decoder's
    own token embeddings have (the original calibrated per example; per vector keeps every position in range)."""

    def __init__(self, config: LatentWireConfig, decoder_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.proj = nn.Linear(config.hidden_size, decoder_width)
        self.scale = nn.Parameter(torch.full((), float(config.adapter_scale_init)))

    def forward(self, latents, embedding_rms: float):
        prefix = self.proj(self.norm(latents))
        rms = prefix.float().pow(2).mean(dim=-1, keepdim=True).add(1e-6).rsqrt()
        return (prefix.float() * rms * (embedding_rms * self.scale)).to(prefix.dtype)


def checkpoint_decoder(name: str, decoder, checkpoint_function) -> None:
    """Turn activation checkpointing of a frozen decoder's layers on (`checkpoint_function`) or off (None). Its layers
    checkpoint only in training mode, so a decoder whose outputs change in training mode (dropout, router noise) is
    refused: training the wire through it would silently train against a noisier decoder than the one evaluated."""
    if checkpoint_function is None:
        decoder._set_gradient_checkpointing(enable=False)
        return
    if not getattr(decoder, "supports_gradient_checkpointing", False):
        raise ValueError(f"decoder {name!r} ({type(decoder).__name__}) does not support gradient checkpointing")
    embeddings = decoder.get_input_embeddings()
    probe = torch.arange(min(8, embeddings.num_embeddings), device=embeddings.weight.device)[None]
    was_training = decoder.training
    with torch.no_grad():
        evaluated = decoder.eval()(input_ids=probe, use_cache=False).logits.float()
        trained = decoder.train()(input_ids=probe, use_cache=False).logits.float()
    decoder.train(was_training)
    difference = (trained - evaluated).abs().max().item()
    if difference > 1e-3 * (1 + evaluated.abs().max().item()):
        raise ValueError(f"decoder {name!r} computes differently in training mode (max |logit change| {difference:.3g}:"
                         " dropout or other train-time noise), and its layers checkpoint only in training mode: "
                         "load it with that dropout at 0, or train without gradient_checkpointing")
    decoder._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=checkpoint_function)


class LatentWirePreTrainedModel(PreTrainedModel):
    config_class = LatentWireConfig
    base_model_prefix = "wire"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WireBlock"]
    _supports_sdpa = True
    # Range checks of byte ids read tensor values: on an accelerator each is a host-device sync; trainers that checked
    # the batch on the CPU turn them off (modeling.device_value_checks).
    check_values_on_device = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Normal(0, byte_embedding_std) byte embeddings, normal(0, initializer_range) linear weights and latent
        queries, zero biases, unit LayerNorm gains, adapter scales at `adapter_scale_init`."""
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.byte_embedding_std)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, DecoderAdapter):
            module.scale.fill_(self.config.adapter_scale_init)
        elif isinstance(module, LatentWireModel):
            nn.init.normal_(module.latent_queries, std=std)


class LatentWireModel(LatentWirePreTrainedModel):
    """Bytes -> M latents -> one soft prefix per decoder. Decoders: `attach_decoder` / `load_decoders`."""

    def __init__(self, config: LatentWireConfig):
        super().__init__(config)
        self.embed_bytes = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(WireBlock(config) for _ in range(config.num_hidden_layers))
        self.encoder_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.latent_queries = nn.Parameter(torch.empty(config.num_latents, config.hidden_size))
        self.pooler = WireBlock(config)
        self.latent_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.adapters = nn.ModuleDict({entry["name"]: DecoderAdapter(config, int(entry["hidden_size"]))
                                       for entry in config.decoders})
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        # Outside the module tree on purpose: not in state_dict (never saved), not in parameters() (never optimized),
        # not moved by .to() (the caller places each decoder, e.g. in bf16 on its own device).
        object.__setattr__(self, "decoders", {})
        object.__setattr__(self, "decoder_tokenizers", {})
        self._decoder_checkpointing = None  # the checkpoint function the decoders' layers use, when enabled
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_bytes

    def set_input_embeddings(self, value):
        self.embed_bytes = value

    # ---- the wire ----
    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        """`input_ids` (B, T) bytes (0-255) or padding; `attention_mask` (B, T), 1 for real bytes (default: every id
        but the padding id). Returns the latents and every decoder's prefix."""
        key_mask = self._check_inputs(input_ids, attention_mask)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        embeddings = self.embed_bytes(input_ids)
        hidden = self.dropout(embeddings + sinusoidal_positions(input_ids.shape[1], self.config.hidden_size,
                                                                embeddings.device, embeddings.dtype))
        all_hidden = (hidden,) if output_hidden_states else None
        for block in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden = self._gradient_checkpointing_func(block.__call__, hidden, key_mask)
            else:
                hidden = block(hidden, key_mask)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        memory = self.encoder_norm(hidden)
        queries = self.latent_queries.to(memory.dtype).expand(input_ids.shape[0], -1, -1)
        latents = self.latent_norm(self.pooler(queries, key_mask, memory=memory))
        prefixes = tuple(self.adapt(latents, entry["name"]) for entry in self.config.decoders)
        result = LatentWireOutput(last_hidden_state=latents, prefixes=prefixes, hidden_states=all_hidden)
        return result if return_dict in (None, True) else result.to_tuple()

    def adapt(self, latents: torch.Tensor, name: str) -> torch.Tensor:
        """The (B, M, D) soft prefix of decoder `name` (before calibration, at unit RMS)."""
        rms = self.config.decoder(name)["embedding_rms"]
        return self.adapters[name](latents, 1.0 if rms is None else rms)

    def _check_inputs(self, input_ids, attention_mask) -> torch.Tensor:
        config = self.config
        if input_ids is None or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError("input_ids must be an integer tensor of byte ids, shape (batch, bytes)")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): a batch needs at least one text of "
                             "at least one byte")
        if input_ids.shape[1] > config.max_position_embeddings:
            raise ValueError(f"{input_ids.shape[1]} bytes exceed max_position_embeddings "
                             f"({config.max_position_embeddings}): shorten the text, nothing is cut silently")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                             f"{tuple(input_ids.shape)}")
        key_mask = input_ids.ne(config.pad_token_id) if attention_mask is None else attention_mask.bool()
        if input_ids.device.type == "cpu" or self.check_values_on_device:
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()
            if low < 0 or high >= config.vocab_size:
                raise ValueError(f"input_ids contain ids outside the byte vocab [0, {config.vocab_size}) (min {low}, "
                                 f"max {high}): encode text with the wire's byte tokenizer")
            if not bool(key_mask.any(dim=1).all()):
                raise ValueError("every row needs at least one real byte (attention_mask all zero in some row)")
        return key_mask

    # ---- decoders ----
    def attach_decoder(self, name: str, decoder, tokenizer) -> None:
        """Attach the frozen decoder `name` (any causal LM taking `inputs_embeds`) with its tokenizer. The first
        attach calibrates the adapter (the decoder's embedding RMS) and records the anchor's ids and the tokenizer's
        size; every later attach (after loading the wire) must find the same, else the wire was not trained for it."""
        entry = self.config.decoder(name)
        embeddings = decoder.get_input_embeddings().weight
        if embeddings.shape[1] != int(entry["hidden_size"]):
            raise ValueError(f"decoder {name!r} embeds into {embeddings.shape[1]} dims; the adapter writes "
                             f"{entry['hidden_size']}")
        if len(tokenizer) > embeddings.shape[0]:
            raise ValueError(f"tokenizer of {name!r} has {len(tokenizer)} tokens, its decoder only "
                             f"{embeddings.shape[0]} embeddings")
        found = {"embedding_rms": embeddings.detach().float().pow(2).mean().sqrt().item(),
                 "anchor_ids": tokenizer(entry["anchor_text"], add_special_tokens=False).input_ids,
                 "tokenizer_size": len(tokenizer)}
        if entry["bos_after_prefix"] and tokenizer.bos_token_id is None:
            raise ValueError(f"decoder {name!r}: bos_after_prefix is set but its tokenizer has no BOS token")
        for field, value in found.items():
            recorded = entry[field]
            if recorded is not None and recorded != value and not (
                    field == "embedding_rms" and math.isclose(recorded, value, rel_tol=1e-3)):
                raise ValueError(f"decoder {name!r}: {field} is {value}, the wire was trained with {recorded}: this "
                                 "is not the decoder (or tokenizer) it was trained for")
        entry.update({field: value for field, value in found.items() if entry[field] is None})  # all checks passed
        decoder.requires_grad_(False)
        if self._decoder_checkpointing is not None:
            checkpoint_decoder(name, decoder, self._decoder_checkpointing)
        decoder.train(self.training and self._decoder_checkpointing is not None)
        self.decoders[name] = decoder
        self.decoder_tokenizers[name] = tokenizer

    def load_decoders(self, **from_pretrained_kwargs) -> None:
        """Load and attach every decoder whose entry names `name_or_path` (at its `revision`), with its tokenizer."""
        for entry in self.config.decoders:
            if entry["name"] in self.decoders:
                continue
            if not entry["name_or_path"]:
                raise ValueError(f"decoder {entry['name']!r} names no name_or_path: attach it with attach_decoder")
            source = dict(revision=entry["revision"]) if entry["revision"] else {}
            decoder = AutoModelForCausalLM.from_pretrained(entry["name_or_path"], **source, **from_pretrained_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(entry["name_or_path"], **source)
            self.attach_decoder(entry["name"], decoder, tokenizer)

    def train(self, mode: bool = True):
        super().train(mode)
        for decoder in self.decoders.values():
            # Frozen means eval mode (no dropout), except that transformers' layers checkpoint only in training mode:
            # checkpointed decoders follow the wire, after checkpoint_decoder found training mode to change nothing.
            decoder.train(mode and self._decoder_checkpointing is not None)
        return self

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint, **kwargs):
        """Trainer's `gradient_checkpointing` reaches the wire's blocks and every attached decoder's layers (the frozen
        decoders hold nearly all the activations the prefix's gradient flows back through)."""
        super()._set_gradient_checkpointing(enable=enable, gradient_checkpointing_func=gradient_checkpointing_func,
                                            **kwargs)
        self._decoder_checkpointing = gradient_checkpointing_func if enable else None
        for name, decoder in self.decoders.items():
            checkpoint_decoder(name, decoder, self._decoder_checkpointing)
        self.train(self.training)

    def decoder_inputs(self, name: str, prefix: torch.Tensor, continuation_ids: Optional[torch.Tensor] = None,
                       continuation_mask: Optional[torch.Tensor] = None) -> dict:
        """Inputs of decoder `name` for its `prefix` (B, M, D; from `forward(...).prefixes`): [prefix ⊕ (BOS) ⊕
        anchor ⊕ continuation] as `inputs_embeds`, `attention_mask`, `position_ids` and `labels`. The continuation
        (B, L) is right-padded (`continuation_mask` 1 on real tokens): labels hold its real tokens at their own
        positions (the decoder shifts once) and -100 elsewhere; padding gets attention 0. Without a continuation the
        result is a generation prompt (no labels)."""
        decoder, entry = self._decoder(name), self.config.decoder(name)
        embed = decoder.get_input_embeddings()
        if embed.weight.device != prefix.device:
            raise ValueError(f"decoder {name!r} is on {embed.weight.device}, the prefix on {prefix.device}")
        batch, device = prefix.shape[0], prefix.device
        prompt_ids = list(entry["anchor_ids"])
        if entry["bos_after_prefix"]:
            prompt_ids = [self.decoder_tokenizers[name].bos_token_id] + prompt_ids
        prompt = embed(torch.tensor(prompt_ids, device=device, dtype=torch.long)).expand(batch, -1, -1)
        pieces = [prefix.to(embed.weight.dtype), prompt]
        prompt_length = prefix.shape[1] + len(prompt_ids)
        mask = [torch.ones(batch, prompt_length, device=device, dtype=torch.long)]
        labels = None
        if continuation_ids is not None:
            if continuation_mask is None:
                continuation_mask = torch.ones_like(continuation_ids)
            if continuation_mask.shape != continuation_ids.shape:
                raise ValueError(f"continuation_mask shape {tuple(continuation_mask.shape)} must equal "
                                 f"continuation_ids shape {tuple(continuation_ids.shape)}")
            pieces.append(embed(continuation_ids))
            mask.append(continuation_mask.long())
            labels = torch.cat([torch.full((batch, prompt_length), -100, device=device, dtype=torch.long),
                                continuation_ids.masked_fill(continuation_mask == 0, -100)], dim=1)
        attention_mask = torch.cat(mask, dim=1)
        position_ids = torch.arange(attention_mask.shape[1], device=device).expand(batch, -1)
        inputs = dict(inputs_embeds=torch.cat(pieces, dim=1), attention_mask=attention_mask, position_ids=position_ids)
        return inputs if labels is None else {**inputs, "labels": labels}

    @torch.no_grad()
    def generate_with(self, name: str, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      **generate_kwargs) -> torch.Tensor:
        """The continuation token ids (B, new) that decoder `name` generates after the wire's prefix of the texts
        (byte ids) and the anchor."""
        prefixes = self(input_ids=input_ids, attention_mask=attention_mask).prefixes
        index = [entry["name"] for entry in self.config.decoders].index(self.config.decoder(name)["name"])
        return self.generate_from_prefix(name, prefixes[index], **generate_kwargs)

    @torch.no_grad()
    def generate_from_prefix(self, name: str, prefix: torch.Tensor, **generate_kwargs) -> torch.Tensor:
        """`generate_with` for a prefix already computed. Every prompt has the same length (M + anchor), so no
        prompt is padded."""
        inputs = self.decoder_inputs(name, prefix)
        inputs.pop("position_ids")  # generate derives the same 0..n-1 positions from the all-ones mask
        tokenizer = self.decoder_tokenizers[name]
        generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                   else tokenizer.eos_token_id)
        return self._decoder(name).generate(**inputs, **generate_kwargs)

    def _decoder(self, name: str):
        if name not in self.decoders:
            raise ValueError(f"decoder {name!r} is not attached: attach_decoder({name!r}, model, tokenizer) or "
                             "load_decoders()")
        return self.decoders[name]


__all__ = ["LatentWireModel", "LatentWirePreTrainedModel", "LatentWireOutput"]
