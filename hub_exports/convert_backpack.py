"""Convert Backpack checkpoints into hubzoo's `backpack` causal LM, strictly. Two sources:

* **backpack-gpt2** (`stanfordnlp/backpack-gpt2`, HF remote code): a folder with `config.json` (`model_type` "gpt2",
  `num_senses`, `sense_intermediate_scale`, ...) and `pytorch_model.bin` (or `model.safetensors`). GPT-2 and
  sense-network projections are `Conv1D` (weight (in, out)) and are transposed; the shared embedding is saved under
  three keys (`backpack.gpt2_model.wte`, `backpack.word_embeddings`, `lm_head`) and the positions under two: any subset
  is accepted, several must be equal. GPT-2's `attn.bias`/`attn.masked_bias` buffers are dropped.
* **nanoBackpackLM** (`SwordElucidator/nanoBackpackLM`): the `ckpt.pt` dict of `train.py` (`model` with the
  `_orig_mod.` prefix, `model_args`; `optimizer`, `iter_num`, `best_val_loss`, `config` ignored). The embedding has four
  keys; the contextualizer has `n_layer - 1` blocks; the sense network's last projection and LayerNorm are d-major and
  are permuted to hubzoo's sense-major layout; the causal-mask buffer is dropped.

Both are read with `torch.load(weights_only=True)` (or safetensors); unknown keys and missing tensors stop the
conversion with their names.
"""

import re
from pathlib import Path

import torch

from hub_exports.strict_mapping import (
    ConversionError,
    check_complete,
    load_folder_weights,
    load_torch_file,
    make_config,
    read_json_config,
)
from hub_exports.tokenizer_checks import tokenizer_outside_vocabulary
from modeling.backpack import BackpackConfig, BackpackForCausalLM

PREFIX = "_orig_mod."
EMBEDDING = "backpack.embed_tokens.weight"
POSITIONS = "backpack.embed_positions.weight"
# (original key regex, hubzoo key template, transpose a Conv1D weight). `None` target: a buffer to drop.
STANFORD_KEYS = [
    (r"backpack\.(gpt2_model\.wte|word_embeddings)\.weight|lm_head\.weight", EMBEDDING, False),
    (r"backpack\.(gpt2_model\.wpe|position_embeddings)\.weight", POSITIONS, False),
    (r"backpack\.gpt2_model\.h\.(\d+)\.ln_1\.(weight|bias)", r"backpack.layers.\1.attn_norm.\2", False),
    (r"backpack\.gpt2_model\.h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"backpack.layers.\1.attn.qkv_proj.\2", True),
    (r"backpack\.gpt2_model\.h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"backpack.layers.\1.attn.o_proj.\2", True),
    (r"backpack\.gpt2_model\.h\.(\d+)\.ln_2\.(weight|bias)", r"backpack.layers.\1.mlp_norm.\2", False),
    (r"backpack\.gpt2_model\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"backpack.layers.\1.mlp.up_proj.\2", True),
    (r"backpack\.gpt2_model\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"backpack.layers.\1.mlp.down_proj.\2", True),
    (r"backpack\.gpt2_model\.h\.\d+\.attn\.(bias|masked_bias)", None, False),
    (r"backpack\.gpt2_model\.ln_f\.(weight|bias)", r"backpack.final_norm.\1", False),
    (r"backpack\.sense_network\.ln\.(weight|bias)", r"backpack.sense_network.input_norm.\1", False),
    (r"backpack\.sense_network\.block\.ln_(\d)\.(weight|bias)", r"backpack.sense_network.block_norm_\1.\2", False),
    (r"backpack\.sense_network\.block\.mlp\.c_fc\.(weight|bias)", r"backpack.sense_network.block_mlp.up_proj.\1", True),
    (r"backpack\.sense_network\.block\.mlp\.c_proj\.(weight|bias)", r"backpack.sense_network.block_mlp.down_proj.\1",
     True),
    (r"backpack\.sense_network\.final_mlp\.c_fc\.(weight|bias)", r"backpack.sense_network.output_mlp.up_proj.\1",
     True),
    (r"backpack\.sense_network\.final_mlp\.c_proj\.(weight|bias)", r"backpack.sense_network.output_mlp.down_proj.\1",
     True),
    (r"backpack\.sense_weight_net\.c_attn\.(weight|bias)", r"backpack.sense_weights.\1", False),  # an nn.Linear
]
NANO_KEYS = [
    (r"wte\.weight|backpack\.logit_layer\.lm_head\.weight|backpack\.sense_vector_layer\.wte\.weight"
     r"|backpack\.contextualization_layer\.transformer\.wte\.weight", EMBEDDING, False),
    (r"backpack\.contextualization_layer\.transformer\.wpe\.weight", POSITIONS, False),
    (r"backpack\.sense_vector_layer\.ff_(\d)\.c_fc\.(weight|bias)", r"backpack.sense_network.mlp_\1.up_proj.\2", False),
    (r"backpack\.sense_vector_layer\.ff_(\d)\.c_proj\.(weight|bias)", r"backpack.sense_network.mlp_\1.down_proj.\2",
     False),
    (r"backpack\.sense_vector_layer\.ln_(\d)\.(weight|bias)", r"backpack.sense_network.norm_\1.\2", False),
    (r"backpack\.contextualization_layer\.bias", None, False),
    (r"backpack\.contextualization_layer\.transformer\.h\.\d+\.attn\.bias", None, False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.ln_1\.(weight|bias)",
     r"backpack.layers.\1.attn_norm.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)",
     r"backpack.layers.\1.attn.qkv_proj.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.attn\.c_proj\.(weight|bias)",
     r"backpack.layers.\1.attn.o_proj.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.ln_2\.(weight|bias)",
     r"backpack.layers.\1.mlp_norm.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.mlp\.c_fc\.(weight|bias)",
     r"backpack.layers.\1.mlp.up_proj.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.h\.(\d+)\.mlp\.c_proj\.(weight|bias)",
     r"backpack.layers.\1.mlp.down_proj.\2", False),
    (r"backpack\.contextualization_layer\.transformer\.ln_f\.(weight|bias)", r"backpack.final_norm.\1", False),
    (r"backpack\.contextualization_layer\.c_attn\.weight", "backpack.sense_weights.weight", False),
]
STANFORD_CONFIG_FIELDS = ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "num_senses",
                          "sense_intermediate_scale")
NANO_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "n_sense_vector")


def convert_backpack(source, tokenizer=None):
    """A backpack-gpt2 folder or a nanoBackpackLM `ckpt.pt` -> (`BackpackForCausalLM` in float32 eval mode, format
    name: "backpack-gpt2" or "nanobackpacklm"). A checkpoint that cannot be converted raises ConversionError naming
    the file and the keys or fields."""
    source = Path(source)
    if source.is_dir():
        weights_file, config, state, checkpoint_format = _read_stanford(source)
    else:
        weights_file, (config, state, checkpoint_format) = source, _read_nano(source)
    try:
        if tokenizer is not None:
            misfit = tokenizer_outside_vocabulary(tokenizer, config["vocab_size"])
            if misfit:
                raise ConversionError(f"wrong tokenizer: {misfit} (the checkpoint's embedding rows)")
            config.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
        model = BackpackForCausalLM(make_config(BackpackConfig, config, "its config"))
        mapping = STANFORD_KEYS if checkpoint_format == "backpack-gpt2" else NANO_KEYS
        mapped = map_keys(state, mapping, checkpoint_format)
        if checkpoint_format == "nanobackpacklm":
            _to_sense_major(mapped, model.config)
        if EMBEDDING in mapped:
            mapped["lm_head.weight"] = mapped[EMBEDDING]  # tied
        check_complete(mapped, model.state_dict(), f"the {checkpoint_format} checkpoint")
    except ConversionError as error:
        raise ConversionError(f"{weights_file}: {error}") from None
    model.load_state_dict(mapped, strict=True)
    return model.eval(), checkpoint_format


def _read_stanford(folder: Path):
    config_path = folder / "config.json"
    original = read_json_config(config_path)
    missing = [name for name in STANFORD_CONFIG_FIELDS if name not in original]
    if missing:
        raise ConversionError(f"{config_path} is not a backpack-gpt2 config: it lacks {missing}")
    weights_file, state = load_folder_weights(folder)
    d = original["n_embd"]
    config = dict(vocab_size=original["vocab_size"], hidden_size=d, num_senses=original["num_senses"],
                  num_hidden_layers=original["n_layer"], num_attention_heads=original["n_head"],
                  intermediate_size=original.get("n_inner") or 4 * d,
                  sense_intermediate_size=original["sense_intermediate_scale"] * d,
                  max_position_embeddings=original["n_positions"], sense_network="stanford", use_bias=True,
                  sense_weight_bias=True, scale_sense_weights=True,
                  scale_attn_by_inverse_layer_idx=original.get("scale_attn_by_inverse_layer_idx", False),
                  hidden_act=original.get("activation_function", "gelu_new"),
                  layer_norm_eps=original.get("layer_norm_epsilon", 1e-5),
                  dropout=original.get("resid_pdrop", 0.1))
    if not original.get("scale_attn_weights", True) or original.get("reorder_and_upcast_attn", False):
        raise ConversionError(f"{config_path}: only GPT-2 contextualizers with scale_attn_weights=True and "
                              "reorder_and_upcast_attn=False convert")
    return weights_file, config, state, "backpack-gpt2"


def _read_nano(path: Path):
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) \
            or not isinstance(checkpoint.get("model_args"), dict):
        raise ConversionError(f"{path} is not a nanoBackpackLM train.py checkpoint (no 'model' and 'model_args')")
    args = checkpoint["model_args"]
    missing = [name for name in NANO_ARGS if name not in args]
    if missing:
        raise ConversionError(f"{path}: model_args lacks {missing}")
    if args["n_layer"] < 2:
        raise ConversionError(f"{path}: n_layer {args['n_layer']} leaves no contextualization block (it builds "
                              "n_layer-1)")
    d = args["n_embd"]
    config = dict(vocab_size=args["vocab_size"], hidden_size=d, num_senses=args["n_sense_vector"],
                  num_hidden_layers=args["n_layer"] - 1, num_attention_heads=args["n_head"], intermediate_size=4 * d,
                  sense_intermediate_size=4 * d, max_position_embeddings=args["block_size"], sense_network="nano",
                  use_bias=bool(args["bias"]), sense_weight_bias=False, scale_sense_weights=False,
                  scale_attn_by_inverse_layer_idx=False, hidden_act="gelu_new", layer_norm_eps=1e-5,
                  dropout=float(args.get("dropout", 0.0)))
    state = {key.removeprefix(PREFIX): value for key, value in checkpoint["model"].items()}
    return config, state, "nanobackpacklm"


def map_keys(state: dict, mapping, checkpoint_format: str) -> dict:
    mapped, unknown = {}, []
    for key, tensor in state.items():
        for pattern, template, transpose in mapping:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            if template is None:
                break
            target = match.expand(template) if "\\" in template else template
            tensor = tensor.t() if transpose and tensor.dim() == 2 else tensor
            if target in mapped and not torch.equal(mapped[target], tensor):
                raise ConversionError(f"{checkpoint_format}: {key} should alias the tensor already read for {target}, "
                                      "but its values differ")
            mapped[target] = tensor.float().contiguous()
            break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"unknown keys in the {checkpoint_format} checkpoint: {sorted(unknown)}")
    return mapped


def _to_sense_major(mapped: dict, config) -> None:
    """nanoBackpackLM orders the k·d sense values d-major (index i·k + l); hubzoo sense-major (l·d + i)."""
    d, k = config.hidden_size, config.num_senses
    for name in ("mlp_2.down_proj.weight", "mlp_2.down_proj.bias", "norm_2.weight", "norm_2.bias"):
        key = f"backpack.sense_network.{name}"
        if key in mapped:
            tensor = mapped[key]
            mapped[key] = tensor.view(d, k, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape).contiguous()


def describe(model, checkpoint_format: str) -> str:
    """One line for the CLI: what was converted."""
    c = model.config
    return (f"Converted a {checkpoint_format} checkpoint ({c.sense_network} sense network): {c.num_senses} senses, "
            f"{c.num_hidden_layers} contextualization blocks, d={c.hidden_size}, vocab {c.vocab_size}, "
            f"{model.num_parameters():,} parameters")
