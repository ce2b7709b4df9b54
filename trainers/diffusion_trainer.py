"""`Trainer` for masked diffusion LMs (MDLM, BD3-LM): the NELBO of the originals, exact under gradient accumulation and
multi-process data parallelism, with an EMA of the weights used for evaluation and export.

Per micro-batch (x_0 from the collator, labels = x_0 with -100 at padding) the model's diffusion policy
(`modeling.diffusion`) draws t and the masks, gives the NELBO weights and says which tokens evaluation scores. The
quantity optimised per optimizer step is sum over masked tokens of weight * -log p(x_0 | x_t), divided by the
number of real tokens of the step (masked or not: the original's per-token NELBO), over all micro-batches and ranks.

Prompt-conditioned rows (the collator's `prompt_mask`): the noise never masks the prompt and its labels are -100, so
the sum runs over masked completion tokens and the denominator is the number of completion tokens of the step (EOS
fill included): the NELBO per completion token of -log p(completion | prompt). LLaDA's SFT divides each row's sum by
that row's answer length (EOS fill included, as here) and averages the rows; counting tokens over the whole step
instead keeps the originals' per-token NELBO, weighs every completion token alike whatever its row's prompt length,
and stays exact under gradient accumulation. The two agree when every row has as many completion tokens.

Noise comes from a generator seeded by (seed, rank, optimizer step, micro-step), not from the global RNG: a resumed run
draws exactly the noise of the uninterrupted one, and evaluation draws the same noise at every evaluation (seeded by
the batch index), so evaluation losses along a run are comparable.
"""

import hashlib
from contextlib import nullcontext

import torch
from transformers import Trainer

from modeling import diffusion_policy, require_diffusion_policy
from modeling.mdlm import masked_diffusion_nelbo
from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.collators import PROMPT_MASK
from trainers.compiled import CompiledTrainingMixin
from trainers.ema import EMACallback
from trainers.mlm_trainer import CollatorCheckedMixin, mean_scored_tokens_per_row, normalise_over_step


class MaskedDiffusionTrainer(CompleteCheckpointsMixin, CompiledTrainingMixin, CollatorCheckedMixin, Trainer):
    def __init__(self, *args, ema_decay: float = 0.9999, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.label_smoothing_factor or self.compute_loss_func is not None:
            raise ValueError("MaskedDiffusionTrainer computes its own loss: no label_smoothing_factor or "
                             "compute_loss_func")
        unwrapped = self.accelerator.unwrap_model(self.model)
        self.policy = require_diffusion_policy(unwrapped, "MaskedDiffusionTrainer")
        self.policy.validate(unwrapped)
        # As in MaskedLMTrainer: makes Trainer count the labelled (real) tokens of the whole optimizer step, which is
        # exactly our denominator, and skip its own division by the accumulation steps.
        self.model_accepts_loss_kwargs = True
        self.ema_callback = EMACallback(ema_decay) if ema_decay else None
        if self.ema_callback:
            self.add_callback(self.ema_callback)
        self._micro_step = (-1, 0)  # (optimizer step, micro-batches drawn at it)
        self._eval_batch, self._eval_tokens_per_row = 0, None

    # ---- noise ----
    def _generator(self, *key) -> torch.Generator:
        digest = hashlib.blake2b(repr((self.args.seed, self.args.process_index) + key).encode(), digest_size=8)
        return torch.Generator(device=self.args.device).manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def _training_generator(self) -> torch.Generator:
        step, drawn = self._micro_step
        drawn = drawn + 1 if step == self.state.global_step else 0
        self._micro_step = (self.state.global_step, drawn)
        return self._generator("train", self.state.global_step, drawn)

    def draw_noise(self, model, clean, generator, training: bool, keep=None):
        """(x_t, t) for a batch of clean ids, as the (unwrapped) model's diffusion policy draws them: t is (B,) for
        MDLM, (B, L) per token for BD3-LM, every t in (0, 1]; x_t never masks the `keep` positions (a prompt)."""
        return diffusion_policy(model).draw_noise(model, clean, generator, training, keep)

    # ---- loss ----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        clean, labels = inputs["input_ids"], inputs["labels"]
        attention_mask = inputs.get("attention_mask")
        training = model.training
        generator = self._training_generator() if training else self._generator("eval", self._eval_batch)
        noisy, timesteps = self.draw_noise(unwrapped, clean, generator, training, inputs.get(PROMPT_MASK))
        outputs = model(input_ids=noisy, attention_mask=attention_mask, timesteps=timesteps,
                        **self.policy.forward_inputs(clean))
        if not training and not self.policy.scores_first_token(unwrapped.config):
            labels = labels.clone()
            labels[:, 0] = -100  # the original's evaluation does not score BOS
        weights = self.policy.nelbo_weights(unwrapped, timesteps)
        total = masked_diffusion_nelbo(outputs.logits, noisy, labels, weights, unwrapped.config.mask_token_id).sum()
        if not training and self._eval_tokens_per_row:
            # Trainer averages the batch losses weighted by rows; dividing by rows x (scored tokens per row over the
            # whole evaluation set) makes that average sum(NELBO) / sum(scored tokens), the per-token NELBO, also when
            # rows differ in length.
            loss = total / (labels.shape[0] * self._eval_tokens_per_row)
        else:
            loss = normalise_over_step(self, total, labels, num_items_in_batch, training)
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self):
        # Trainer drops the dataset columns `forward` does not take; the prompt mask is the noise's, not the model's.
        super()._set_signature_columns_if_needed()
        if PROMPT_MASK not in self._signature_columns:
            self._signature_columns.append(PROMPT_MASK)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self._eval_batch += 1
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    # ---- EMA ----
    def averaged_weights(self):
        """Context in which the model holds its EMA weights (or its own ones, without EMA)."""
        if self.ema_callback is None or self.ema_callback.ema is None:
            return nullcontext()
        return self.ema_callback.ema.swapped_in(self.accelerator.unwrap_model(self.model))

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        """Evaluation loss (the NELBO per scored token over the whole set) of the EMA weights, under the same noise at
        every call."""
        self._eval_batch = 0
        self._eval_tokens_per_row = self._scored_tokens_per_row(eval_dataset or self.eval_dataset)
        try:
            with self._device_checks(), self.averaged_weights():
                return super().evaluate(eval_dataset, *args, **kwargs)
        finally:
            self._eval_tokens_per_row = None

    def _scored_tokens_per_row(self, dataset):
        """Tokens the evaluation NELBO scores per row: all real tokens, or the completion's of prompt-completion rows;
        BD3-LM with `ignore_bos`: not the first."""
        config = self.accelerator.unwrap_model(self.model).config
        skipped = 0 if self.policy.scores_first_token(config) else 1
        if PROMPT_MASK in getattr(dataset, "column_names", ()):
            return mean_completion_tokens_per_row(dataset, skipped)
        return mean_scored_tokens_per_row(dataset, skipped)


def mean_completion_tokens_per_row(dataset, skipped: int):
    """Mean positions per row outside the prompt, the first `skipped` positions left out."""
    counts = [sum(not kept for kept in prompt[skipped:]) for prompt in dataset[PROMPT_MASK]]
    return max(1e-9, sum(counts) / len(counts)) if counts else None
