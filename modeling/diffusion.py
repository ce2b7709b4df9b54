"""What differs between the masked diffusion architectures (MDLM, BD3-LM) wherever they are trained, scored, converted
or sampled: one policy object per architecture, registered in `modeling.DIFFUSION_POLICIES` and found with
`modeling.diffusion_policy(model_or_config)`. Trainers, suites and converters ask the policy instead of comparing
`model_type` strings. Not exported (the Hub files stay self-contained): the noise lives here, outside `forward`,
which takes it as an input.

* MDLM: one t per sequence, antithetic (stratified over the batch), t = (1 - eps) u + eps with eps =
  `config.sampling_eps`; a token is masked when a uniform draw is < move_chance(t) = 1 - exp(-sigma(t)); its NELBO
  weight is sigma'(t) / expm1(sigma(t)) (= 1/t).
* BD3-LM: one t per block, stratified over batch x blocks, in [sampling_eps_min, sampling_eps_max] (the model's
  buffers) for training and in `NELBO_INTERVAL` for evaluation; masked when the uniform is <= t; weight 1/t; with
  `ignore_bos` the first token is never masked, and in evaluation it is not scored.

Both take `keep`, the positions never masked (a prompt, for prompt-conditioned training): the draws are the same with
or without it, only the kept positions stay clean. Each token is masked independently given t, so the NELBO of the
other tokens, with the same weights, bounds -log p(rest | kept tokens).
"""

from typing import Optional, Tuple

import torch

from .bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM
from .mdlm import MdlmConfig, MdlmForMaskedDiffusionLM

NELBO_INTERVAL = (1e-3, 1.0)  # BD3-LM: the interval a likelihood bound is reported on


def stratified_uniforms(shape, generator, device) -> torch.Tensor:
    """Uniforms over `shape`, antithetic: the n = numel values are (u_i + i) / n for i in row-major order."""
    count = 1
    for size in shape:
        count *= size
    uniform = torch.rand(shape, generator=generator, device=device)
    return (uniform / count + torch.arange(count, device=device).view(shape) / count) % 1


def corrupt(clean: torch.Tensor, masked: torch.Tensor, keep: Optional[torch.Tensor], mask_token_id: int):
    """x_t: `clean` with the mask id where `masked` holds, except at the `keep` positions."""
    if keep is not None:
        if keep.shape != clean.shape or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool tensor of the ids' shape {tuple(clean.shape)}, got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        masked = masked & ~keep
    return clean.masked_fill(masked, mask_token_id)


class DiffusionPolicy:
    """The behaviour one masked diffusion architecture brings; subclasses state the attributes and the noise."""

    model_type: str
    display_name: str  # as papers and model cards write it
    config_class: type
    model_class: type  # the masked-diffusion LM (AutoModelForMaskedLM)
    # Architecture fields a new model must state: one whose size came from constructor defaults would silently be
    # GPT-2-small.
    required_fields: Tuple[str, ...]
    sample_kwargs: dict  # settings of the samples a training run prints, beyond their number, steps and seed
    # Whether the likelihood's noise is laid out from the target's start, so that texts after contexts of different
    # lengths (the class prompts of a classifier) still share it.
    noise_follows_target: bool
    # Block diffusion: one t per block of `config.block_size` tokens, a denoiser that reads x_t and x_0 together, and
    # a trained sampling interval held in buffers.
    blockwise: bool

    def validate(self, model) -> None:
        """Raise ValueError on a model whose state the NELBO cannot use, before any step is taken."""

    def draw_noise(self, model, clean: torch.Tensor, generator: torch.Generator, training: bool,
                   keep: Optional[torch.Tensor] = None):
        """(x_t, t) for a batch of clean ids, every t in (0, 1]; `keep` (bool, like `clean`): positions x_t keeps."""
        raise NotImplementedError

    def nelbo_weights(self, model, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-token NELBO weights for t per sequence (B,) or per token (B, L)."""
        weights = model.noise_schedule(timesteps)[1]
        return weights[:, None] if weights.dim() == 1 else weights

    def forward_inputs(self, clean: torch.Tensor) -> dict:
        """What `forward` takes beyond x_t, the attention mask and t."""
        return {}

    def scores_first_token(self, config) -> bool:
        """Whether the evaluation NELBO (and perplexity bound) scores the first token of a row."""
        return True

    def likelihood_block_size(self, config) -> Optional[int]:
        """Tokens that share one t in the likelihood's noise; None: one t for the whole sequence."""
        return None


class MdlmPolicy(DiffusionPolicy):
    model_type, display_name = "mdlm", "MDLM"
    config_class, model_class = MdlmConfig, MdlmForMaskedDiffusionLM
    required_fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "cond_dim")
    sample_kwargs = {}
    noise_follows_target, blockwise = True, False

    def draw_noise(self, model, clean, generator, training, keep=None):
        """t is (B,). The interval t is drawn from is checked here, on the host: on an accelerator the model's own
        check of the values is off while the trainer trains (it would be a host-device sync per step)."""
        eps = model.config.sampling_eps
        if not 0.0 < eps < 1.0:
            # t = (1 - eps) u + eps lies in [eps, 1); its NELBO weight 1/t is infinite at t = 0
            raise ValueError(f"config.sampling_eps must lie in (0, 1), got {eps}")
        uniforms = torch.rand(clean.shape, generator=generator, device=clean.device)
        timesteps = (1 - eps) * stratified_uniforms((clean.shape[0],), generator, clean.device) + eps
        masked = uniforms < model.noise_schedule(timesteps)[0][:, None]
        return corrupt(clean, masked, keep, model.config.mask_token_id), timesteps


class Bd3lmPolicy(DiffusionPolicy):
    model_type, display_name = "bd3lm", "BD3-LM"
    config_class, model_class = Bd3lmConfig, Bd3lmForMaskedDiffusionLM
    required_fields = MdlmPolicy.required_fields + ("block_size",)
    sample_kwargs = {"top_p": 0.9}
    noise_follows_target, blockwise = False, True

    def validate(self, model) -> None:
        model.sampling_interval  # validates the buffers

    def draw_noise(self, model, clean, generator, training, keep=None):
        """t is (B, L), one value per block: in the trained sampling interval for training, in `NELBO_INTERVAL` for
        evaluation."""
        batch, length = clean.shape
        config = model.config
        uniforms = torch.rand(clean.shape, generator=generator, device=clean.device)
        low, high = model.sampling_interval if training else NELBO_INTERVAL
        blocks = -(-length // config.block_size)
        per_block = stratified_uniforms((batch, blocks), generator, clean.device) * (high - low) + low
        timesteps = per_block.repeat_interleave(config.block_size, dim=1)[:, :length]
        masked = uniforms <= model.noise_schedule(timesteps)[0]
        if config.ignore_bos:
            masked[:, 0] = False
        return corrupt(clean, masked, keep, config.mask_token_id), timesteps

    def forward_inputs(self, clean):
        return {"clean_ids": clean}

    def scores_first_token(self, config) -> bool:
        """With `ignore_bos` the first token is never masked in training, and the original's evaluation leaves it
        out."""
        return not config.ignore_bos

    def likelihood_block_size(self, config) -> Optional[int]:
        return config.block_size


MDLM, BD3LM = MdlmPolicy(), Bd3lmPolicy()
