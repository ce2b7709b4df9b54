"""Convert original MDLM (kuleshov-group/mdlm) and BD3-LM (kuleshov-group/bd3lms) checkpoints into hubzoo's `mdlm` and
`bd3lm` models, strictly.

Two layouts are read, both with torch's weights-only unpickler or safetensors (no pickled code ever runs):

* the Hub layout: a folder with the original `config.json` (`hidden_dim`, `n_blocks`, `n_heads`, `cond_dim`,
  `model_length`, ...) and `model.safetensors` (or `pytorch_model.bin`) with `backbone.*` keys. These files hold the
  EMA weights (the original export script copies the EMA shadow parameters in before saving).
* the Lightning `.ckpt` of the training code: `state_dict` holds the live weights, `ema.shadow_params` the EMA weights
  as a list in `backbone.parameters()` order, `hyper_parameters.config` the Hydra config. `weights="ema"` (the
  default, what the originals evaluate and export) or `"live"` picks one. The training code pickles the config as an
  omegaconf DictConfig and the tokenizer object beside it: every such object is read as an inert record
  (`hub_exports.inert_pickle`), the config's records are turned into plain dicts with their reference interpolations
  resolved (`hub_exports.omegaconf_records`), and a needed field that is still not a plain value is named. Objects
  anywhere but `hyper_parameters` are refused.

Every key is mapped by an explicit table; unknown keys and keys the model needs but the checkpoint lacks stop the
conversion with the full list. The stored rotary `inv_freq` is checked against the config and dropped (hubzoo computes
it). The mask id cannot be read from the weights: it comes from the tokenizer (its mask token, else its size, which is
the original's rule) or is stated. For BD3-LM the checkpoint's `sampling_eps_min`/`sampling_eps_max` buffers are the
trained values and win over the config's fields; a disagreement is logged.
"""

import logging
import re
from pathlib import Path
from typing import Optional

import torch

from hub_exports.inert_pickle import is_record, records_in
from hub_exports.omegaconf_records import Unresolved, plain_config
from hub_exports.strict_mapping import (
    ConversionError,
    check_complete,
    checkpoint_folder,
    load_folder_weights,
    load_torch_file_keeping_records,
    make_config,
    read_json_config,
)
from modeling import DIFFUSION_POLICIES

logger = logging.getLogger(__name__)

# (original key regex, hubzoo key template without the trunk prefix). `None` = consumed by a check, not copied.
KEY_MAP = [
    (r"backbone\.vocab_embed\.embedding", r"{trunk}.embed_tokens.weight"),
    (r"backbone\.sigma_map\.mlp\.([02])\.(weight|bias)", r"{trunk}.time_embedder.mlp.\1.\2"),
    (r"backbone\.blocks\.(\d+)\.norm1\.weight", r"{trunk}.layers.\1.attn_norm.weight"),
    (r"backbone\.blocks\.(\d+)\.attn_qkv\.weight", r"{trunk}.layers.\1.qkv_proj.weight"),
    (r"backbone\.blocks\.(\d+)\.attn_out\.weight", r"{trunk}.layers.\1.out_proj.weight"),
    (r"backbone\.blocks\.(\d+)\.norm2\.weight", r"{trunk}.layers.\1.mlp_norm.weight"),
    (r"backbone\.blocks\.(\d+)\.mlp\.([02])\.(weight|bias)", r"{trunk}.layers.\1.mlp.\2.\3"),
    (r"backbone\.blocks\.(\d+)\.adaLN_modulation\.(weight|bias)", r"{trunk}.layers.\1.modulation.\2"),
    (r"backbone\.output_layer\.norm_final\.weight", r"output_layer.norm.weight"),
    (r"backbone\.output_layer\.linear\.(weight|bias)", r"output_layer.lm_head.\1"),
    (r"backbone\.output_layer\.adaLN_modulation\.(weight|bias)", r"output_layer.modulation.\1"),
    (r"sampling_eps_(min|max)", r"sampling_eps_\1"),
    (r"backbone\.rotary_emb\.inv_freq", None),
]
BUFFER_KEYS = re.compile(r"backbone\.rotary_emb\.inv_freq|sampling_eps_(min|max)")
# Original Hub config field -> hubzoo field; all required.
HUB_CONFIG_FIELDS = {"vocab_size": "vocab_size", "hidden_dim": "hidden_size", "n_blocks": "num_hidden_layers",
                     "n_heads": "num_attention_heads", "cond_dim": "cond_dim",
                     "model_length": "max_position_embeddings", "dropout": "dropout",
                     "time_conditioning": "time_conditioning"}
ORIGINAL_DEFAULT_ALGORITHM = "mdlm"  # what a Lightning config without algo.name trained (the MDLM code names none)
# The Lightning config's model.<field> -> hubzoo field; all required.
LIGHTNING_MODEL_FIELDS = {"hidden_size": "hidden_size", "n_blocks": "num_hidden_layers",
                          "n_heads": "num_attention_heads", "cond_dim": "cond_dim",
                          "length": "max_position_embeddings", "dropout": "dropout"}
LIGHTNING_RESAVE_HINT = ("Re-save state_dict, ema and hyper_parameters.config as tensors and plain dicts in the "
                         "original environment")
BD3LM_HUB_FIELDS = {"block_size": "block_size", "sampling_eps_min": "sampling_eps_min",
                    "sampling_eps_max": "sampling_eps_max", "adaln": "adaln"}


def convert_diffusion(source, tokenizer=None, mask_token_id: Optional[int] = None, weights: str = "ema"):
    """Original checkpoint (a Hub folder or a Lightning `.ckpt` file) -> `MdlmForMaskedDiffusionLM` or
    `Bd3lmForMaskedDiffusionLM` in eval mode. The architecture is read from the checkpoint's config. A checkpoint that
    cannot be converted raises ConversionError naming the file and the keys or fields."""
    source = Path(source)
    if weights not in ("ema", "live"):
        raise ValueError(f"weights must be 'ema' or 'live', got {weights!r}")
    shadow = None
    if source.is_file():
        weights_file = source
        policy, fields, state, shadow = _read_lightning(source, weights)
    else:
        if weights != "ema":
            raise ConversionError(f"{source} is a Hub export, which holds the EMA weights only; the live weights are "
                                  "in the training run's Lightning .ckpt")
        weights_file, policy, fields, state = _read_hub_folder(source)
    try:
        fields["vocab_size"] = _vocab_size(state, fields)
        fields["mask_token_id"] = _mask_token_id(fields["vocab_size"], tokenizer, mask_token_id)
        if tokenizer is not None:
            fields["pad_token_id"] = tokenizer.pad_token_id
        if policy.blockwise:
            _take_buffer_interval(fields, state)
        model = policy.model_class(make_config(policy.config_class, fields, "its config"))
        # The state dict is checked by name first: a key missing, extra or mis-shaped there is named, and the EMA
        # shadow list (which has no names) is then matched, shape by shape, against a state dict known to be complete.
        mapped = _map_keys(state, policy, model.config)
        check_complete(mapped, model.state_dict(), "the checkpoint")
        if shadow is not None:
            mapped = _map_keys(_with_ema_weights(state, shadow), policy, model.config)
    except ConversionError as error:
        raise ConversionError(f"{weights_file}: {error}") from None
    model.load_state_dict(mapped, strict=True)
    try:
        policy.validate(model)  # e.g. BD3-LM's loaded sampling-interval buffers
    except ValueError as error:
        raise ConversionError(f"{weights_file}: {error}") from None
    return model.eval()


def _read_hub_folder(folder: Path):
    config_path = checkpoint_folder(folder) / "config.json"
    original = read_json_config(config_path)
    policy = _policy_named(original.get("model_type"))
    if policy is None:
        raise ConversionError(f"{config_path}: model_type {original.get('model_type')!r} is neither "
                              f"{' nor '.join(map(repr, DIFFUSION_POLICIES))}")
    table = {**HUB_CONFIG_FIELDS, **(BD3LM_HUB_FIELDS if policy.blockwise else {})}
    missing = sorted(name for name in table if name not in original)
    if missing:
        raise ConversionError(f"{config_path} lacks required fields {missing}")
    fields = {ours: original[theirs] for theirs, ours in table.items()}
    if policy.blockwise:
        _check_block_attention(original.get("cross_attn"), original.get("causal"), config_path)
    weights_file, state = load_folder_weights(folder)
    return weights_file, policy, fields, state


def _policy_named(name):
    """The diffusion policy of an original checkpoint's architecture name (the originals name theirs as hubzoo does)."""
    return DIFFUSION_POLICIES.get(name) if isinstance(name, str) else None


def _read_lightning(path: Path, weights: str):
    """(diffusion policy, config fields, the state dict's live tensors, the EMA shadow list or None for
    weights='live')."""
    checkpoint = load_torch_file_keeping_records(path, refusal_hint=LIGHTNING_RESAVE_HINT)
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} is not a Lightning checkpoint of the original code: not a dict")
    _refuse_objects_outside_hyper_parameters(checkpoint, path)
    hyper_parameters = plain_config(checkpoint.get("hyper_parameters"))
    if not isinstance(checkpoint.get("state_dict"), dict) or not isinstance(hyper_parameters, dict):
        raise ConversionError(f"{path} is not a Lightning checkpoint of the original code: no 'state_dict' and "
                              "'hyper_parameters' dicts")
    config = hyper_parameters.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ConversionError(f"{path}: hyper_parameters.config is missing or not a config of plain values (a dict "
                              f"or an omegaconf DictConfig), got {_described(config)}")
    policy, fields = _lightning_fields(_Settings(config, path))
    state = dict(checkpoint["state_dict"])
    shadow = None
    if weights == "ema":
        ema = checkpoint.get("ema")
        if not isinstance(ema, dict) or "shadow_params" not in ema:
            raise ConversionError(f"{path} has no EMA weights (ckpt['ema']['shadow_params']); convert with "
                                  "weights='live'")
        shadow = ema["shadow_params"]
    for name in ("sampling_eps_min", "sampling_eps_max"):  # on_save_checkpoint's top-level copies
        if name in checkpoint and name in state and not torch.equal(checkpoint[name], state[name]):
            raise ConversionError(f"{path}: top-level {name} {checkpoint[name].item()} disagrees with the "
                                  f"state_dict's {state[name].item()}")
    return policy, fields, state, shadow


def _refuse_objects_outside_hyper_parameters(checkpoint: dict, path: Path) -> None:
    """Lightning pickles the training code's objects only into hyper_parameters (save_hyperparameters: the Hydra
    config, the tokenizer); the weights, the EMA and the loop state are tensors and plain containers. An object
    anywhere else means the file is not what it claims to be."""
    for key, value in checkpoint.items():
        if key == "hyper_parameters":
            continue
        for where, record in records_in(value, f"[{key!r}]"):
            raise ConversionError(f"{path} was refused for safety: its entry {where} holds the global "
                                  f"{record.global_name}, and outside hyper_parameters (the Hydra config, the "
                                  "tokenizer) a Lightning checkpoint holds only tensors and plain containers; hubzoo "
                                  f"never unpickles code. {LIGHTNING_RESAVE_HINT}")


def _lightning_fields(settings) -> tuple:
    """(diffusion policy, config fields) from the original's Hydra config."""
    algo_name = settings.get("algo.name", None)
    policy = _policy_named(ORIGINAL_DEFAULT_ALGORITHM if algo_name is None else algo_name)
    parameterization = settings.first("parameterization", "algo.parameterization", default=None)
    if policy is None or parameterization != "subs":
        raise ConversionError(f"{settings.path}: only the SUBS masked-diffusion models (mdlm, bd3lm) convert, got "
                              f"algo {algo_name!r}, parameterization {parameterization!r}")
    missing = sorted(name for name in LIGHTNING_MODEL_FIELDS if not settings.has(f"model.{name}"))
    if missing:
        raise ConversionError(f"{settings.path}: hyper_parameters.config.model lacks {missing}")
    fields = {ours: settings.get(f"model.{theirs}") for theirs, ours in LIGHTNING_MODEL_FIELDS.items()}
    fields["time_conditioning"] = bool(settings.first("algo.time_conditioning", "time_conditioning", default=False))
    if policy.blockwise:
        _check_block_attention(settings.get("algo.cross_attn", None), settings.get("algo.causal_attention", None),
                               settings.path)
        # The Lightning DIT always has adaLN for its bidirectional denoiser, whatever model.adaln says.
        fields.update(block_size=settings.get("block_size"), adaln=True)
        # The configured interval, which the searched buffers replace (announced like a Hub config's).
        fields.update({name: settings.get(f"training.{name}") for name in ("sampling_eps_min", "sampling_eps_max")
                       if settings.has(f"training.{name}")})
    return policy, fields


_ABSENT = object()


class _Settings:
    """Reads hyper_parameters.config by dotted name, as plain values: a value the converter needs that is an
    unresolvable interpolation, a missing value or a pickled object is a ConversionError naming the field."""

    def __init__(self, config: dict, path: Path):
        self.config, self.path = config, path

    def has(self, name: str) -> bool:
        return self._lookup(name) is not _ABSENT

    def get(self, name: str, default=_ABSENT):
        value = self._lookup(name)
        if value is _ABSENT:
            if default is _ABSENT:
                raise ConversionError(f"{self.path}: hyper_parameters.config lacks {name}")
            return default
        if isinstance(value, Unresolved):
            raise ConversionError(f"{self.path}: hyper_parameters.config.{name} is {value.text!r}, which "
                                  f"{value.reason}")
        if is_record(value):
            raise ConversionError(f"{self.path}: hyper_parameters.config.{name} is {_described(value)}, not a "
                                  "plain value")
        return value

    def first(self, *names: str, default):
        """The first of the named settings the config has, else `default`."""
        return next((self.get(name) for name in names if self.has(name)), default)

    def _lookup(self, name: str):
        value = self.config
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                return _ABSENT
            value = value[key]
        return value


def _described(value) -> str:
    if is_record(value):
        return f"a pickled {value.global_name} object"
    return "nothing" if value is None else f"a {type(value).__name__}"


def _with_ema_weights(state: dict, shadow) -> dict:
    """Replace the parameters by the EMA shadow parameters. The shadow list follows `backbone.parameters()`, which is
    the order of the state dict's parameter keys (buffers left out); shapes are checked one by one."""
    names = [key for key in state if key.startswith("backbone.") and not BUFFER_KEYS.fullmatch(key)]
    if not isinstance(shadow, (list, tuple)) or len(shadow) != len(names):
        count = len(shadow) if isinstance(shadow, (list, tuple)) else type(shadow).__name__
        raise ConversionError(f"ema.shadow_params holds {count} EMA shadow parameters, but the state_dict (complete "
                              f"for the architecture) has {len(names)} backbone parameters: the EMA list belongs to "
                              "another model")
    for name, tensor in zip(names, shadow):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(state[name].shape):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ConversionError(f"the EMA shadow parameter for {name} has shape {shape}, the weight "
                                  f"{tuple(state[name].shape)}: the shadow list is not in parameter order")
    return {**state, **dict(zip(names, shadow))}


def _check_block_attention(cross_attn, causal, where) -> None:
    if cross_attn is not True or causal:
        raise ConversionError(f"{where}: only block-diffusion checkpoints with cross_attn=True and causal=False "
                              f"convert (got cross_attn={cross_attn!r}, causal={causal!r})")


def _vocab_size(state: dict, fields: dict) -> int:
    embedding = state.get("backbone.vocab_embed.embedding")
    if embedding is None:
        raise ConversionError("Checkpoint lacks backbone.vocab_embed.embedding")
    if "vocab_size" in fields and fields["vocab_size"] != embedding.shape[0]:
        raise ConversionError(f"config vocab_size {fields['vocab_size']} != embedding rows {embedding.shape[0]}")
    return embedding.shape[0]


def _mask_token_id(vocab_size: int, tokenizer, mask_token_id: Optional[int]) -> int:
    """The original's rule: the tokenizer's mask token if it has one, else the id right after its vocabulary."""
    from_tokenizer = None
    if tokenizer is not None:
        from_tokenizer = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else len(tokenizer)
    if mask_token_id is not None and from_tokenizer is not None and mask_token_id != from_tokenizer:
        raise ConversionError(f"mask_token_id={mask_token_id} contradicts the tokenizer's mask id {from_tokenizer}")
    chosen = mask_token_id if mask_token_id is not None else from_tokenizer
    if chosen is None:
        raise ConversionError("The mask id is not stored in the weights: pass the tokenizer the model was trained "
                              f"with, or mask_token_id (for GPT-2-based originals it is {vocab_size - 1})")
    if not 0 <= chosen < vocab_size:
        raise ConversionError(f"mask id {chosen} does not fit the checkpoint's vocabulary of {vocab_size}")
    return chosen


def _take_buffer_interval(fields: dict, state: dict) -> None:
    """The checkpoint's sampling-interval buffers are the trained values; the config's fields are often the class
    defaults (the original export script never updates them)."""
    buffers = {name: state[name].item() for name in ("sampling_eps_min", "sampling_eps_max") if name in state}
    if len(buffers) != 2:
        raise ConversionError(f"BD3-LM checkpoint lacks the sampling_eps_min/sampling_eps_max buffers (found "
                              f"{buffers})")
    configured = (fields.get("sampling_eps_min"), fields.get("sampling_eps_max"))
    if configured != (None, None) and configured != (buffers["sampling_eps_min"], buffers["sampling_eps_max"]):
        logger.warning("BD3-LM sampling interval: the checkpoint's buffers (%.6g, %.6g) differ from its config "
                       "(%s, %s); the buffers are the trained values and are used (config updated to match)",
                       buffers["sampling_eps_min"], buffers["sampling_eps_max"], *configured)
    fields.update(buffers)


def _map_keys(state: dict, policy, config) -> dict:
    trunk = policy.model_class.base_model_prefix
    mapped, unknown = {}, []
    for key, tensor in state.items():
        for pattern, template in KEY_MAP:
            match = re.fullmatch(pattern, key)
            if match:
                if template is None:
                    _check_inv_freq(tensor, config)
                else:
                    mapped[match.expand(template.replace("{trunk}", trunk))] = tensor
                break
        else:
            unknown.append(key)
    if not policy.blockwise:  # the sampling-interval buffers are block diffusion's
        unknown += [key for key in mapped if key.startswith("sampling_eps_")]
    if unknown:
        raise ConversionError(f"Unknown keys in the {policy.model_type} checkpoint: {sorted(unknown)}")
    return mapped


def _check_inv_freq(stored: torch.Tensor, config) -> None:
    head_dim = config.hidden_size // config.num_attention_heads
    expected = 1.0 / (config.rotary_base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    if stored.shape != expected.shape or not torch.allclose(stored.float(), expected, rtol=1e-6, atol=0):
        raise ConversionError("backbone.rotary_emb.inv_freq does not match rotary base "
                              f"{config.rotary_base} and head size {head_dim}")
