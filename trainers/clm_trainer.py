"""`Trainer` for causal-LM pretraining: next-token cross-entropy with one label shift, normalised over the predicted
tokens of the whole optimizer step (exact under gradient accumulation and data parallelism), padding never counted;
an exact per-token evaluation loss; and the Muon option of `MuonOptimizerMixin`."""

import torch
from transformers import Trainer

from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.compiled import CompiledTrainingMixin
from trainers.mlm_trainer import CollatorCheckedMixin, mean_scored_tokens_per_row, normalise_over_step
from trainers.muon import MuonOptimizerMixin


class CausalLMTrainer(CompleteCheckpointsMixin, CompiledTrainingMixin, CollatorCheckedMixin, MuonOptimizerMixin,
                      Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.label_smoothing_factor or self.compute_loss_func is not None:
            raise ValueError("CausalLMTrainer computes its own loss: no label_smoothing_factor or compute_loss_func")
        # As in MaskedLMTrainer: Trainer then counts the labelled tokens of the whole optimizer step (our
        # denominator; CausalLMCollator makes every row's first label -100, so the count is the predicted tokens
        # whether or not this transformers version shifts before counting) and skips its own division by GA.
        self.model_accepts_loss_kwargs = True
        self._eval_tokens_per_row = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        # The model shifts the labels once and, with num_items_in_batch=1, returns the summed cross-entropy (fp32
        # logits, -100 for padding and row starts ignored): the loss stays inside a compiled forward.
        outputs = model(**inputs, use_cache=False, num_items_in_batch=1)
        total = outputs.loss
        if not model.training and self._eval_tokens_per_row:
            loss = total / (labels.shape[0] * self._eval_tokens_per_row)
        else:
            loss = normalise_over_step(self, total, labels, num_items_in_batch, model.training)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        """The evaluation loss is the cross-entropy per predicted token over the whole set (every row's first token
        is not predicted)."""
        self._eval_tokens_per_row = mean_scored_tokens_per_row(eval_dataset or self.eval_dataset, unscored_per_row=1)
        try:
            with self._device_checks():
                return super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self._eval_tokens_per_row = None
