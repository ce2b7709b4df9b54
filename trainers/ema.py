"""Exponential moving average of a model's weights, kept during training and used for evaluation and export.

The update is the original MDLM/BD3-LM one (`models/ema.py`): decay_k = min(decay, (1 + k) / (10 + k)) at the k-th
update, shadow <- decay_k * shadow + (1 - decay_k) * weight, over the trainable parameters in float32. The shadow and
k are written into every Trainer checkpoint (`ema.safetensors`) and read back on resume, so a resumed run continues
with exactly the average the uninterrupted one would have.

The averaging step is torch's `torch.optim.swa_utils.get_ema_multi_avg_fn(decay_k)`. We keep our own holder instead
of `swa_utils.AveragedModel`, which with that function computes the same average (tests/test_optimizers.py checks N
updates bit for bit), because AveragedModel
* has no warm-up: `get_ema_multi_avg_fn`/`get_ema_avg_fn` take one fixed decay. At decay 0.9999 the MDLM rule's
  decay_k stays below it for the first ~90,000 updates, so a fixed decay gives another average; reproducing the rule
  takes a `multi_avg_fn` of our own anyway;
* averages in the model's dtype: it deep-copies the module, so a model held in bfloat16 gets a bfloat16 average, in
  which an update of (1 - decay) * difference below half a bf16 ulp is lost; ours keeps float32;
* copies the whole module (frozen parameters and buffers included) as a second `nn.Module` that Trainer does not
  evaluate or export: Trainer evaluates and saves `self.model`, so the average must still be copied into it and the
  live weights put back, as `swapped_in` does. Its `state_dict` (`module.*`, `n_averaged`) is also another format
  than the `ema.safetensors` that checkpoints and resume use.
Buffers are not averaged; the model's own are used with the averaged weights (AveragedModel's `use_buffers=False`).
"""

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import get_ema_multi_avg_fn

from trainers.checkpoints import CheckpointExtras

logger = logging.getLogger(__name__)
EMA_FILE = "ema.safetensors"


class ExponentialMovingAverage:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.num_updates = decay, 0
        self.names = [name for name, param in model.named_parameters() if param.requires_grad]
        self.shadow = [param.detach().float().clone() for name, param in model.named_parameters()
                       if param.requires_grad]

    def _params(self, model):
        params = dict(model.named_parameters())
        missing = [name for name in self.names if name not in params]
        if missing:
            raise ValueError(f"EMA tracks parameters the model does not have: {missing[:5]}")
        return [params[name] for name in self.names]

    @torch.no_grad()
    def update(self, model) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [param.detach().float() for param in self._params(model)]
        get_ema_multi_avg_fn(decay)(self.shadow, params, self.num_updates)

    @contextmanager
    def swapped_in(self, model):
        """Within the block the model holds the averaged weights; its own weights are restored on exit."""
        params = self._params(model)
        saved = [param.detach().clone() for param in params]
        with torch.no_grad():
            for param, average in zip(params, self.shadow):
                param.copy_(average)
        try:
            yield model
        finally:
            with torch.no_grad():
                for param, own in zip(params, saved):
                    param.copy_(own)

    def save(self, folder) -> None:
        tensors = {name: tensor.contiguous().cpu() for name, tensor in zip(self.names, self.shadow)}
        save_file(tensors, Path(folder) / EMA_FILE,
                  metadata={"decay": json.dumps(self.decay), "num_updates": json.dumps(self.num_updates)})

    def load(self, folder) -> None:
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the checkpoint was saved without its EMA weights, so resuming "
                                    "would restart the average")
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(path)
        if sorted(tensors) != sorted(self.names):
            raise ValueError(f"{path} tracks other parameters than the model: "
                             f"{sorted(set(tensors) ^ set(self.names))[:5]}")
        device = self.shadow[0].device if self.shadow else "cpu"
        self.shadow = [tensors[name].to(device) for name in self.names]
        self.decay, self.num_updates = json.loads(metadata["decay"]), json.loads(metadata["num_updates"])


class EMACallback(CheckpointExtras):
    """Maintains an `ExponentialMovingAverage` of the trained model and saves it into each checkpoint (part of what
    makes the checkpoint complete: a resume needs it)."""

    resume_files = {EMA_FILE: "the EMA weights: resuming without them would restart the average"}

    def __init__(self, decay: float = 0.9999):
        self.decay = decay
        self.ema = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema = ExponentialMovingAverage(model, self.decay)
        if self.resume_from:
            self.ema.load(self.resume_from)
            logger.info("EMA resumed from %s after %d updates", self.resume_from, self.ema.num_updates)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def write_checkpoint_extras(self, folder, model, state) -> None:
        self.ema.save(folder)
