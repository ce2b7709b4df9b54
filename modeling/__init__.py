"""hubzoo architectures. Importing this package registers every architecture with the transformers Auto classes.

Registration lives here, never in the exported modeling files: on the Hub it would run again inside the dynamic
module and collide with a local registration.
"""

import inspect
from contextlib import contextmanager
from typing import Optional

import transformers

from . import backpack, bd3lm, latent_wire, ltg_bert, mdlm, modded_gpt
from .diffusion import BD3LM, MDLM, DiffusionPolicy

# model_type -> (config class, {Auto class name: model class})
ARCHITECTURES = {
    "ltg_bert": (ltg_bert.LtgBertConfig, ltg_bert.AUTO_CLASSES),
    "mdlm": (mdlm.MdlmConfig, mdlm.AUTO_CLASSES),
    "bd3lm": (bd3lm.Bd3lmConfig, bd3lm.AUTO_CLASSES),
    "modded_gpt": (modded_gpt.ModdedGptConfig, modded_gpt.AUTO_CLASSES),
    "backpack": (backpack.BackpackConfig, backpack.AUTO_CLASSES),
    "latent_wire": (latent_wire.LatentWireConfig, latent_wire.AUTO_CLASSES),
}
# model_type -> what that masked diffusion architecture brings to training, scoring, conversion and sampling
DIFFUSION_POLICIES = {policy.model_type: policy for policy in (MDLM, BD3LM)}


def _register(model_type, config_class, auto_classes):
    transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
    config_class.register_for_auto_class()
    for auto_name, model_class in auto_classes.items():
        getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


def auto_map(model_type: str) -> dict:
    """The complete `auto_map` of an exported repo: AutoConfig plus every task class of the architecture."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"Unknown hubzoo model_type {model_type!r}; known: {sorted(ARCHITECTURES)}")
    config_class, auto_classes = ARCHITECTURES[model_type]
    entries = {"AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}"}
    for auto_name, model_class in auto_classes.items():
        entries[auto_name] = f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}"
    return entries


def task_class(model_type: str, class_name: str) -> tuple:
    """`(Auto class name, model class)` for a hubzoo class named as in `config.architectures`."""
    for auto_name, model_class in ARCHITECTURES.get(model_type, (None, {}))[1].items():
        if model_class.__name__ == class_name:
            return auto_name, model_class
    raise ValueError(f"{class_name!r} is not a registered class of hubzoo model_type {model_type!r}")


def _model_type_of(model_or_config) -> Optional[str]:
    config = model_or_config if isinstance(model_or_config, transformers.PretrainedConfig) else \
        getattr(model_or_config, "config", None)
    return getattr(config, "model_type", None)


def diffusion_policy(model_or_config) -> Optional[DiffusionPolicy]:
    """The `DiffusionPolicy` of a masked diffusion model or config (also one loaded as remote code), else None."""
    return DIFFUSION_POLICIES.get(_model_type_of(model_or_config))


def require_diffusion_policy(model_or_config, user: str) -> DiffusionPolicy:
    """`diffusion_policy`, for `user` (named in the error), which works with masked diffusion models only."""
    policy = diffusion_policy(model_or_config)
    if policy is None:
        raise ValueError(f"{user} needs a masked diffusion model (model_type {' or '.join(DIFFUSION_POLICIES)}), got "
                         f"{type(model_or_config).__name__} with model_type {_model_type_of(model_or_config)!r}")
    return policy


def supports_sparse_prediction(model) -> bool:
    """Whether `model.forward` takes `sparse_prediction` (its MLM head can run on the labelled positions only)."""
    return "sparse_prediction" in inspect.signature(model.forward).parameters


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


for _model_type, (_config_class, _auto_classes) in ARCHITECTURES.items():
    _register(_model_type, _config_class, _auto_classes)

__all__ = ["ARCHITECTURES", "DIFFUSION_POLICIES", "DiffusionPolicy", "auto_map", "device_value_checks",
           "diffusion_policy", "require_diffusion_policy", "supports_sparse_prediction", "task_class"]
