"""Convert modded-nanogpt (KellerJordan/modded-nanogpt) checkpoints into hubzoo's `modded_gpt` causal LM, strictly.

The speedrun saves `dict(step, code, model=state_dict(), optimizers=[...])` of the `torch.compile`d model, so every
key carries `_orig_mod.`; it is read with `torch.load(..., weights_only=True)` (no pickled code runs), and only
`model` is used (`step`, `code`, `optimizers` are ignored; any other top-level entry is an error). Two formats are
recognised from their keys and shapes:

* **small** (`train_gpt.py`, 2025-05-30 .. 2025-07-14): `blocks.i.attn.qkv_w (3, hdim, d)`, `attn.c_proj.weight`,
  `mlp.c_fc.weight`, `mlp.c_proj.weight`, `embed`/`value_embeds` padded to the head's rows, `scalars (5n + pad)`;
  soft-cap `30·sigmoid(z / (7.5·√d))`, U-net skips, windows `[L,S,S,S,L,S,S,L,S,S,S,L]`.
* **medium** (`train_gpt_medium.py`, 2025-04-25 .. 2025-12-02): `blocks.i.attn.qkvo_w (4, hdim, d)` (Q, K, V, O),
  `mlp.fc_w`, `mlp.proj_w`, `lm_head_w` (fp32, rounded to bf16 at use), unpadded `embed`/`value_embeds`, `scalars`;
  ISRU soft-cap 15, skips `{9: 6, 10: 4, 11: 2}`, un-normed attention input with normed values.

The vocabulary is read from the tensors (head rows = padded vocab; medium embeddings = real vocab), the layer count
and widths from the shapes, the layers without attention from the missing attention keys. `head_dim` is not visible
in the shapes (128 in every record) and the EOT id and real vocabulary of a small-format checkpoint come from the
tokenizer. Medium-format embeddings are padded with zero rows to the head's size (ids there are rejected anyway).
"""

import logging
import math
import re
from typing import Optional

import torch

from hub_exports.strict_mapping import ConversionError, check_complete, load_torch_file, make_config
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM
from modeling.modded_gpt.configuration_modded_gpt import small_track_layout

logger = logging.getLogger(__name__)

PREFIX = "_orig_mod."
IGNORED_ENTRIES = {"step", "code", "optimizers"}
# Sliding windows at the end of the record runs, in 128-token blocks (what they validate with): named when a
# checkpoint records no window, never taken silently.
FINAL_WINDOW_BLOCKS = {"small": 14, "medium": 27}
FROM_CHECKPOINT = -1  # sliding_window_num_blocks: the window the checkpoint's training script records
# (format, original key regex, hubzoo key template)
KEY_MAP = {
    "small": [
        (r"embed\.weight", "model.embed_tokens.weight"),
        (r"value_embeds\.(\d+)\.weight", r"model.value_embeddings.\1.weight"),
        (r"scalars", "model.scalars"),
        (r"blocks\.(\d+)\.attn\.qkv_w", r"model.layers.\1.attn.qkv_proj.weight"),
        (r"blocks\.(\d+)\.attn\.c_proj\.weight", r"model.layers.\1.attn.o_proj.weight"),
        (r"blocks\.(\d+)\.mlp\.c_fc\.weight", r"model.layers.\1.mlp.up_proj.weight"),
        (r"blocks\.(\d+)\.mlp\.c_proj\.weight", r"model.layers.\1.mlp.down_proj.weight"),
        (r"lm_head\.weight", "lm_head.weight"),
    ],
    "medium": [
        (r"embed\.weight", "model.embed_tokens.weight"),
        (r"value_embeds\.(\d+)\.weight", r"model.value_embeddings.\1.weight"),
        (r"scalars", "model.scalars"),
        (r"blocks\.(\d+)\.attn\.qkvo_w", r"model.layers.\1.attn.qkv_proj.weight"),  # O split off below
        (r"blocks\.(\d+)\.mlp\.fc_w", r"model.layers.\1.mlp.up_proj.weight"),
        (r"blocks\.(\d+)\.mlp\.proj_w", r"model.layers.\1.mlp.down_proj.weight"),
        (r"lm_head_w", "lm_head.weight"),
    ],
}
MEDIUM_WINDOWS = ["long", "short", "short", "short", "long", "short", "short", "short", "short", "short", "short",
                  "long", "short", "short", "short", "long"]


def read_checkpoint(path) -> dict:
    """The model's state dict of a speedrun checkpoint (or of a bare state dict file), `_orig_mod.` stripped."""
    return state_dict_of(load_torch_file(path), path)


def state_dict_of(checkpoint, path) -> dict:
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    if "model" in checkpoint:
        unknown = sorted(set(checkpoint) - IGNORED_ENTRIES - {"model"})
        if unknown:
            raise ConversionError(f"{path}: unknown top-level entries {unknown} (expected model, step, code, "
                                  "optimizers)")
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint \
            or not all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise ConversionError(f"{path} has no state dict of tensors under 'model'")
    return {key.removeprefix(PREFIX): value for key, value in checkpoint.items()}


def recorded_window_blocks(checkpoint) -> Optional[int]:
    """The long sliding window (in 128-token blocks) at the checkpoint's `step`, read from the training script the
    speedrun stores in `code` (parsed as text, never run). Both convertible eras grow the window in
    `get_window_size_blocks` with the progress `x = step / args.num_iterations`: `next_multiple_of_n(W * x, n=128)`
    (small, linear) or `next_multiple_of_n(W * factor, n=128)`, `factor = 4 * x ** 3 - 6 * x ** 2 + 3 * x` (medium,
    cubic). None unless the script states W, the schedule and `num_iterations` once each."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("code"), str) \
            or not isinstance(checkpoint.get("step"), int):
        return None
    code = checkpoint["code"]
    windows = set(re.findall(
        r"window_size\s*=\s*next_multiple_of_n\(\s*(\d+)\s*\*\s*(x|factor)\s*,\s*n\s*=\s*128\s*\)", code))
    iterations = set(re.findall(r"^\s*num_iterations\s*(?::\s*int\s*)?=\s*(\d+)\b", code, re.MULTILINE))
    progress_defined = re.search(r"\bx\s*=\s*step\s*/\s*(args\.)?num_iterations\b", code)
    if len(windows) != 1 or len(iterations) != 1 or not progress_defined:
        return None
    [(tokens, schedule)] = windows
    x = checkpoint["step"] / int(iterations.pop())
    if not 0 <= x <= 1:
        return None
    if schedule == "factor":
        cubic = r"\bfactor\s*=\s*4\s*\*\s*x\s*\*\*\s*3\s*-\s*6\s*\*\s*x\s*\*\*\s*2\s*\+\s*3\s*\*\s*x\s*(#.*)?$"
        if not re.search(cubic, code, re.MULTILINE):
            return None
        x = 4 * x ** 3 - 6 * x ** 2 + 3 * x
    return max(1, math.ceil(int(tokens) * x / 128))  # next_multiple_of_n starts at one block


def _window_blocks(stated: Optional[int], recorded: Optional[int], checkpoint_format: str) -> Optional[int]:
    """The stated window (None: no window), else the recorded one; a checkpoint that records none needs it stated,
    since a wrong window gives a model that loads, verifies and computes different logits."""
    if stated != FROM_CHECKPOINT:
        if recorded is not None and stated != recorded:
            logger.warning("sliding window: %s blocks as stated; the checkpoint's training script records %s",
                           stated, recorded)
        return stated
    if recorded is None:
        raise ConversionError(
            "the checkpoint does not record its sliding window (its `code` holds no training script whose window "
            "schedule and num_iterations can be read): pass --window-blocks N (sliding_window_num_blocks), the long "
            "window in 128-token blocks the model was trained and evaluated with (the "
            f"{checkpoint_format} record runs end at {FINAL_WINDOW_BLOCKS[checkpoint_format]}), or 0 for none")
    logger.info("sliding window: %s blocks, from the training script recorded in the checkpoint", recorded)
    return recorded


def detect_format(state: dict) -> str:
    """'small' (`qkv_w`, `c_proj`, `c_fc`) or 'medium' (`qkvo_w`, `fc_w`, `proj_w`, `lm_head_w`), from the keys."""
    keys = set(state)
    if any(re.fullmatch(r"blocks\.\d+\.attn\.qkv_w", key) for key in keys) and "lm_head.weight" in keys:
        return "small"
    if any(re.fullmatch(r"blocks\.\d+\.attn\.qkvo_w", key) for key in keys) and "lm_head_w" in keys:
        if any(re.fullmatch(r"blocks\.\d+\.mlp\.c_fc(\.weight)?", key) for key in keys):
            raise ConversionError("qkvo_w with mlp.c_fc: a train_gpt.py checkpoint of 2025-08 or later (sparse "
                                  "attention gate, FA3 era), which hubzoo does not convert")
        return "medium"
    if "skip_weights" in keys or any(key.endswith(".lambdas") for key in keys):
        raise ConversionError("separate skip_weights/lambdas: a train_gpt.py checkpoint from before 2025-05-30 (no "
                              "`scalars`), which hubzoo does not convert")
    raise ConversionError(f"not a modded-nanogpt small (qkv_w) or medium (qkvo_w) checkpoint; keys: "
                          f"{sorted(keys)[:12]}...")


def architecture(state: dict, checkpoint_format: str, head_dim: int) -> dict:
    """Config fields read from the tensors' shapes."""
    embed, head = _tensor(state, "embed.weight"), _tensor(state, "lm_head.weight" if checkpoint_format == "small"
                                                                     else "lm_head_w")
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))}
    num_layers = max(blocks) + 1
    if blocks != set(range(num_layers)):
        raise ConversionError(f"blocks {sorted(set(range(num_layers)) - blocks)} are missing from the checkpoint")
    attn_key = "qkv_w" if checkpoint_format == "small" else "qkvo_w"
    with_attention = [i for i in range(num_layers) if f"blocks.{i}.attn.{attn_key}" in state]
    if not with_attention:
        raise ConversionError("no block has attention weights")
    attention = state[f"blocks.{with_attention[0]}.attn.{attn_key}"]
    hidden_size, inner = embed.shape[1], attention.shape[1]
    if inner % head_dim:
        raise ConversionError(f"attention width {inner} is not a multiple of head_dim={head_dim}")
    up = state.get(f"blocks.0.mlp.{'c_fc.weight' if checkpoint_format == 'small' else 'fc_w'}")
    if up is None:
        raise ConversionError("blocks.0 has no MLP input weight")
    scalars = _tensor(state, "scalars")
    if scalars.dim() != 1 or scalars.shape[0] < 5 * num_layers:
        raise ConversionError(f"scalars has shape {tuple(scalars.shape)}; {num_layers} blocks need at least "
                              f"{5 * num_layers} entries (skip weights, block lambdas, value lambdas, then padding)")
    value_embeddings = sorted(int(m.group(1)) for key in state
                              if (m := re.fullmatch(r"value_embeds\.(\d+)\.weight", key)))
    fields = dict(vocab_size=head.shape[0], hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=inner // head_dim, head_dim=head_dim, intermediate_size=up.shape[0],
                  num_scalars=scalars.shape[0],
                  layers_without_attention=[i for i in range(num_layers) if i not in with_attention])
    fields.update(_era_layout(checkpoint_format, num_layers, hidden_size))
    expected_ve = sorted({i for i in fields["value_embedding_layers"] if i is not None})
    if value_embeddings != expected_ve:
        raise ConversionError(f"the {checkpoint_format} format has value embeddings {expected_ve}, the checkpoint "
                              f"{value_embeddings}")
    return fields


def _era_layout(checkpoint_format: str, num_layers: int, hidden_size: int) -> dict:
    if checkpoint_format == "small":
        if num_layers != 12:
            raise ConversionError(f"the small format hard-codes 12 blocks (windows, skips, block 7); got {num_layers}")
        layout = small_track_layout(num_layers)
        layout.pop("num_scalars")
        return dict(layout, logit_softcap="sigmoid", logit_softcap_cap=30.0,
                    logit_softcap_temperature=7.5 * hidden_size ** 0.5)
    if num_layers != 16:
        raise ConversionError(f"the medium format hard-codes 16 blocks (windows, skip map, block 7); got {num_layers}")
    return dict(value_embedding_layers=[0, 1, 2] + [None] * 10 + [0, 1, 2],
                skip_connections=[[6, 9, 6], [4, 10, 4], [2, 11, 2]], block_lambdas_offset=num_layers,
                value_lambdas_offset=3 * num_layers, attention_windows=MEDIUM_WINDOWS, attention_input_norm=False,
                value_norm=True, logit_softcap="isru", logit_softcap_cap=15.0, logit_softcap_temperature=None,
                round_head_weight_to_bf16=True)


def _tensor(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"the checkpoint lacks {key}")
    return state[key]


def convert_modded_gpt(source, tokenizer=None, *, tokenizer_vocab_size: Optional[int] = None,
                       eot_token_id: Optional[int] = None, head_dim: int = 128,
                       sliding_window_num_blocks: Optional[int] = FROM_CHECKPOINT,
                       max_position_embeddings: int = 4096):
    """A speedrun checkpoint (path, or a state dict already read) -> (`ModdedGptForCausalLM` in float32 eval mode,
    detected format). The real vocabulary and EOT come from the medium format's embeddings and the tokenizer (its size
    and `eos_token_id`), or are stated; the window is the one the checkpoint's training script records
    (`FROM_CHECKPOINT`, see `recorded_window_blocks`), else stated (`None`: no window). A checkpoint that cannot be
    converted raises ConversionError naming the file and the keys."""
    if isinstance(source, dict):
        checkpoint, state = None, dict(source)
    else:
        checkpoint = load_torch_file(source)
        state = state_dict_of(checkpoint, source)
    try:
        checkpoint_format = detect_format(state)
        fields = architecture(state, checkpoint_format, head_dim)
        fields["tokenizer_vocab_size"] = _real_vocab(state, checkpoint_format, tokenizer, tokenizer_vocab_size,
                                                     fields["vocab_size"])
        fields["eot_token_id"] = _eot(tokenizer, eot_token_id)
        window = _window_blocks(sliding_window_num_blocks, recorded_window_blocks(checkpoint), checkpoint_format)
        if tokenizer is not None:
            fields["pad_token_id"] = tokenizer.pad_token_id
            fields["eos_token_id"] = tokenizer.eos_token_id
            fields["bos_token_id"] = tokenizer.bos_token_id
        config = make_config(ModdedGptConfig, dict(fields, sliding_window_num_blocks=window,
                                                   max_position_embeddings=max_position_embeddings),
                             "the detected architecture")
        model = ModdedGptForCausalLM(config)
        mapped = map_keys(state, checkpoint_format, model.state_dict())
    except ConversionError as error:
        if checkpoint is None:
            raise
        raise ConversionError(f"{source}: {error}") from None
    model.load_state_dict(mapped, strict=True)
    return model.eval(), checkpoint_format


def _real_vocab(state, checkpoint_format, tokenizer, stated, padded) -> int:
    candidates = {}
    if checkpoint_format == "medium":
        candidates["the medium embeddings' rows"] = state["embed.weight"].shape[0]
    elif state["embed.weight"].shape[0] != padded:
        raise ConversionError(f"small format: embed has {state['embed.weight'].shape[0]} rows but the head "
                              f"{padded}; the small format pads both")
    if tokenizer is not None:
        candidates["the tokenizer's size"] = len(tokenizer)
    if stated is not None:
        candidates["tokenizer_vocab_size"] = stated
    if not candidates:
        raise ConversionError("the small format does not store the real vocabulary size: pass the tokenizer or "
                              "tokenizer_vocab_size")
    if len(set(candidates.values())) > 1:
        raise ConversionError(f"vocabulary sizes disagree: {candidates}")
    real = next(iter(candidates.values()))
    if real > padded:
        raise ConversionError(f"{real} token ids do not fit the checkpoint's {padded} head rows: wrong tokenizer")
    return real


def _eot(tokenizer, stated) -> int:
    from_tokenizer = None if tokenizer is None else tokenizer.eos_token_id
    if stated is not None and from_tokenizer is not None and stated != from_tokenizer:
        raise ConversionError(f"eot_token_id={stated} contradicts the tokenizer's EOS id {from_tokenizer}")
    chosen = stated if stated is not None else from_tokenizer
    if chosen is None:
        raise ConversionError("the EOT (document separator) id is not stored in the weights: pass the tokenizer "
                              "(GPT-2: <|endoftext|> = 50256) or eot_token_id")
    return chosen


def map_keys(state: dict, checkpoint_format: str, target: dict) -> dict:
    """Original tensors -> hubzoo state dict (float32), refusing unknown keys, missing keys and wrong shapes."""
    mapped, unknown = {}, []
    for key, tensor in state.items():
        for pattern, template in KEY_MAP[checkpoint_format]:
            match = re.fullmatch(pattern, key)
            if match:
                new_key = match.expand(template)
                if new_key.endswith("qkv_proj.weight") and tensor.dim() == 3:
                    if checkpoint_format == "medium":
                        mapped[new_key.replace("qkv_proj", "o_proj")] = tensor[3]
                        tensor = tensor[:3]
                    tensor = tensor.flatten(0, 1)
                mapped[new_key] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"unknown keys in the {checkpoint_format}-format checkpoint: {sorted(unknown)}")
    for key in ("model.embed_tokens.weight", *(k for k in mapped if k.startswith("model.value_embeddings."))):
        mapped[key] = _pad_rows(mapped[key], target[key].shape[0])
    check_complete(mapped, target, f"the {checkpoint_format}-format checkpoint")
    return {key: tensor.float() for key, tensor in mapped.items()}


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def describe(model, checkpoint_format: str) -> str:
    """One paragraph for the CLI: what was detected."""
    c = model.config
    windows = "none" if c.sliding_window_num_blocks is None else \
        f"{c.sliding_window_num_blocks}/{c.sliding_window_num_blocks // 2} blocks of {c.window_block_size}"
    cap = "none"
    if c.logit_softcap == "sigmoid":
        cap = f"{c.logit_softcap_cap:g}*sigmoid(z/{c.logit_softcap_temperature:g})"
    elif c.logit_softcap == "isru":
        cap = f"{c.logit_softcap_cap:g}*z/sqrt(z^2+{c.logit_softcap_cap ** 2:g})"
    return (f"Detected the {checkpoint_format} format: {c.num_hidden_layers} layers, d={c.hidden_size}, "
            f"{c.num_attention_heads} heads x {c.head_dim}, MLP {c.intermediate_size}, vocab {c.tokenizer_vocab_size} "
            f"(padded {c.vocab_size}), EOT {c.eot_token_id}, no attention in {c.layers_without_attention}, "
            f"{c.num_value_embeddings} value embeddings, skips {[s[:2] for s in c.skip_connections]}, "
            f"scalars {c.num_scalars}, soft-cap {cap}, windows long/short {windows}, "
            f"{model.num_parameters():,} parameters")
