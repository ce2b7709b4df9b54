"""`Trainer` whose masked-LM loss is exact under gradient accumulation and multi-process data parallelism.

The quantity optimized per optimizer step is (sum of token cross-entropies over every labelled position of the step)
/ (number of labelled positions of the step), over all micro-batches of the accumulation window and all processes.
A per-micro-batch mean (what the model's own `loss` is) weights tokens of sparsely masked micro-batches more heavily,
so the result would depend on how a step is split into micro-batches and ranks.
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from transformers import Trainer

from modeling import device_value_checks, supports_sparse_prediction
from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.compiled import CompiledTrainingMixin


def normalise_over_step(trainer: Trainer, total, labels, num_items_in_batch, training: bool):
    """`total` (a sum of token losses of this micro-batch) divided so that the optimizer step sees (sum over the whole
    step) / (labelled tokens of the whole step), for a Trainer with `model_accepts_loss_kwargs = True`."""
    if num_items_in_batch is None or not training:
        # Evaluation, or a step Trainer did not count: the plain mean over this batch's labelled tokens (and Trainer
        # divides by GA itself in training). Why `not training`: 5.23's `prediction_step` passes a count too once
        # `model_accepts_loss_kwargs` is True. clamp: a batch without labels gives 0, not 0/0 = NaN.
        return total / labels.ne(-100).sum().clamp(min=1)
    # The count covers every micro-batch of this optimizer step; with `average_tokens_across_devices` it is summed
    # over all processes, while DDP *averages* gradients over them: multiply by the number of processes so that the
    # averaged gradient is that of (global sum) / (global count). Without that option the count is per process (each
    # rank's own mean, then averaged), as Trainer itself does.
    loss = total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)
    if trainer.args.average_tokens_across_devices:
        loss = loss * trainer.accelerator.num_processes
    return loss


def mean_scored_tokens_per_row(dataset, unscored_per_row: int = 0):
    """Mean tokens an evaluation loss scores per row of `dataset` (row length minus `unscored_per_row`); None for
    datasets without a length or `input_ids` column. Trainer averages evaluation batch losses weighted by rows, so a
    batch loss of sum / (rows x this) averages to sum / (scored tokens of the whole set), also when rows differ in
    length."""
    if dataset is None or not hasattr(dataset, "__len__") or "input_ids" not in getattr(dataset, "column_names", ()):
        return None
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return max(1e-9, sum(lengths) / len(lengths) - unscored_per_row) if lengths else None


class CollatorCheckedMixin:
    """For `Trainer` subclasses whose collator range-checks every batch on the CPU (its `vocabulary_size`): the
    model's own checks are redundant then, and on an accelerator each is a host-device sync, so they are turned off
    while the trainer trains or evaluates (`_device_checks()`), and restored afterwards."""

    def _batches_checked(self) -> bool:
        checked_below = getattr(self.data_collator, "vocabulary_size", None)
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        accepted = getattr(config, "tokenizer_vocab_size", getattr(config, "vocab_size", None))
        return checked_below is not None and accepted is not None and checked_below <= accepted

    def _device_checks(self):
        if not self._batches_checked():
            return nullcontext()
        return device_value_checks(self.accelerator.unwrap_model(self.model), False)

    def train(self, *args, **kwargs):
        with self._device_checks():
            return super().train(*args, **kwargs)


class MaskedLMTrainer(CompleteCheckpointsMixin, CompiledTrainingMixin, CollatorCheckedMixin, Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.label_smoothing_factor or self.compute_loss_func is not None:
            raise ValueError("MaskedLMTrainer computes its own loss: no label_smoothing_factor or compute_loss_func")
        # The model's forward takes no **kwargs, so Trainer would neither count the labelled tokens of the step nor
        # leave the division by the accumulation steps to us. Declaring it lets Trainer count them (across ranks
        # with `average_tokens_across_devices`) and skip its own division exactly when we normalise by that count.
        # Base `compute_loss` would now pass `num_items_in_batch` to forward; ours never calls it.
        self.model_accepts_loss_kwargs = True
        # Models that can run their MLM head on the labelled positions only (LTG-BERT) do so on the CPU, where it is
        # faster; not on accelerators, where selecting the positions is a host-device sync, and not under
        # torch.compile, where the number of positions is a new shape every step (a recompile, then dynamic shapes).
        unwrapped = self.accelerator.unwrap_model(self.model)
        self._sparse_prediction = (self.args.device.type == "cpu" and not self.args.torch_compile
                                   and supports_sparse_prediction(unwrapped))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # a copy: prediction_step still reads the labels from its own dict for metrics
        labels = inputs.pop("labels")
        if model.training and self._sparse_prediction:
            # The head runs on labelled positions only; logits come back as (num_labelled, vocab).
            outputs = model(**inputs, labels=labels, sparse_prediction=True)
            logits, targets = outputs.logits, labels.flatten()[labels.flatten() != -100]
        else:
            outputs = model(**inputs)  # without labels: the model's own (per-batch mean) loss is not needed
            logits, targets = outputs.logits.flatten(0, 1), labels.flatten()
        # float(): the loss of reduced-precision logits is summed in fp32; padding and unchosen positions are -100.
        token_losses = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
        loss = normalise_over_step(self, token_losses, labels, num_items_in_batch, model.training)
        # A micro-batch without labelled tokens gives an exact zero that still has a grad_fn (sum over nothing of the
        # logits graph), so backward and DDP's gradient all-reduce run on every rank.
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        with self._device_checks():
            return self._evaluate_at_epoch_zero(*args, **kwargs)

    def _evaluate_at_epoch_zero(self, *args, **kwargs):
        # A collator that masks per epoch (MaskedLMCollator) masks the evaluation set as in epoch 0 every time, so
        # evaluation losses along the run are measured on the same masked tokens and stay comparable.
        collator = self.data_collator
        if not hasattr(collator, "epoch"):
            return super().evaluate(*args, **kwargs)
        training_epoch, collator.epoch = collator.epoch, 0
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            collator.epoch = training_epoch
