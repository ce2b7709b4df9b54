"""Training a LatentWire: a collator that pairs the texts' bytes with each decoder's answer tokens, and a `Trainer`
whose loss is, per decoder, teacher-forced cross-entropy on the answer (plus a weighted first-token term), normalised
over the answer tokens of the whole optimizer step, across gradient accumulation and processes."""

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import Trainer

from eval_suites.wire_prompts import left_padded, text_prompts
from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.compiled import CompiledTrainingMixin
from trainers.mlm_trainer import CollatorCheckedMixin


class LatentWireCollator:
    """Rows {"text", "answer"} -> `input_ids`/`attention_mask` (the text's UTF-8 bytes, right-padded) and, per decoder
    `name`, `answer_ids.name`/`answer_mask.name`: the answer in that decoder's tokenizer, without special tokens,
    followed by its EOS (so that every decoder learns to stop), right-padded. Too long a text is refused, not cut.
    With `anchor_ids` ({name: ids}), also `prompt_ids.name`/`prompt_mask.name`: the text in that decoder's tokens
    followed by the anchor, left-padded (the teacher's prompt for distillation)."""

    def __init__(self, byte_tokenizer, decoder_tokenizers: dict, max_bytes: int, anchor_ids: Optional[dict] = None):
        missing = [name for name, tokenizer in decoder_tokenizers.items() if tokenizer.eos_token_id is None]
        if missing:
            raise ValueError(f"decoders {missing} have no EOS token: answers could never end")
        self.byte_tokenizer, self.decoder_tokenizers, self.max_bytes = byte_tokenizer, decoder_tokenizers, max_bytes
        self.anchor_ids = anchor_ids
        self.vocabulary_size = len(byte_tokenizer)  # ids range-checked here, on the CPU (CollatorCheckedMixin)

    def __call__(self, rows):
        texts, answers = [row["text"] for row in rows], [row["answer"] for row in rows]
        if not all(texts):
            raise ValueError("an empty text gives the wire nothing to read")
        too_long = [len(text.encode()) for text in texts if len(text.encode()) > self.max_bytes]
        if too_long:
            raise ValueError(f"{len(too_long)} texts exceed the wire's {self.max_bytes} bytes (longest "
                             f"{max(too_long)}): filter or shorten them before training")
        batch = dict(self.byte_tokenizer(texts, padding=True, return_tensors="pt"))
        for name, tokenizer in self.decoder_tokenizers.items():
            ids = [tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                   for answer in answers]
            width = max(map(len, ids))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            batch[f"answer_ids.{name}"] = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
            batch[f"answer_mask.{name}"] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
            if self.anchor_ids is not None:
                prompt_batch = left_padded(text_prompts(tokenizer, texts, self.anchor_ids[name]), [], pad)
                batch[f"prompt_ids.{name}"] = prompt_batch["input_ids"]
                batch[f"prompt_mask.{name}"] = prompt_batch["attention_mask"]
        return batch


class LatentWireTrainer(CompleteCheckpointsMixin, CompiledTrainingMixin, CollatorCheckedMixin, Trainer):
    """Loss = mean over decoders of (answer CE per answer token + λ · first-token CE per row) + scale_l2 · Σ (s-1)².
    Each decoder's denominators (its answer tokens; the rows) are counted over the whole optimizer step, on every
    process, so the gradient does not depend on how a step is split into micro-batches or ranks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.compute_loss_func is not None or self.args.label_smoothing_factor:
            raise ValueError("LatentWireTrainer computes its own loss: no compute_loss_func or label smoothing")
        wire = self.accelerator.unwrap_model(self.model)
        self.decoder_names = [entry["name"] for entry in wire.config.decoders]
        missing = [name for name in self.decoder_names if name not in wire.decoders]
        if missing:
            raise ValueError(f"decoders {missing} are not attached: attach_decoder or load_decoders first")
        # With this, Trainer passes our step-wide counts to compute_loss and does not divide by GA itself.
        self.model_accepts_loss_kwargs = True

    def _get_num_items_in_batch(self, batch_samples, device):
        """(answer tokens of each decoder..., rows) over every micro-batch of the step, summed over processes."""
        counts = torch.stack([torch.tensor([batch[f"answer_mask.{name}"].sum().item() for name in self.decoder_names]
                                           + [len(batch["input_ids"])], dtype=torch.float64)
                              for batch in batch_samples]).sum(0).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        return counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        wire = self.accelerator.unwrap_model(model)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        global_step = num_items_in_batch is not None and model.training
        losses = {}
        for index, name in enumerate(self.decoder_names):
            teacher_prompt = None
            if self.args.distillation_weight:
                if f"prompt_ids.{name}" not in inputs:
                    raise ValueError("distillation_weight needs the text prompts: LatentWireCollator(..., anchor_ids=)")
                teacher_prompt = (inputs[f"prompt_ids.{name}"], inputs[f"prompt_mask.{name}"])
            answer_sum, first_sum, kl_sum = answer_losses(wire, name, outputs.prefixes[index],
                                                          inputs[f"answer_ids.{name}"], inputs[f"answer_mask.{name}"],
                                                          teacher_prompt)
            if global_step:
                tokens, rows = num_items_in_batch[index], num_items_in_batch[-1]
            else:
                tokens, rows = inputs[f"answer_mask.{name}"].sum(), len(inputs["input_ids"])
            losses[name] = ((answer_sum + self.args.distillation_weight * kl_sum) / tokens
                            + self.args.first_token_weight * first_sum / rows).float()
        loss = torch.stack(list(losses.values())).mean()
        if global_step and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the counts are global sums
        scales = torch.stack([adapter.scale for adapter in wire.adapters.values()])
        regulariser = self.args.scale_l2 * (scales - 1).pow(2).sum()
        if global_step:  # once per optimizer step, not per micro-batch (an epoch's last step may have fewer)
            regulariser = regulariser / getattr(self, "current_gradient_accumulation_steps",
                                                self.args.gradient_accumulation_steps)
        loss = loss + regulariser
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None


def answer_losses(wire, name: str, prefix, answer_ids, answer_mask, teacher_prompt=None):
    """(Σ CE over the answer tokens, Σ CE of each row's first answer token, Σ KL over the answer tokens) of decoder
    `name` teacher-forced on [prefix ⊕ anchor ⊕ answer]. The logits at position t score the label at t + 1: the one
    shift, done here. With `teacher_prompt` (left-padded text + anchor ids and mask), the KL is that of the same
    decoder reading the text instead of the prefix (no gradient) from the prefix-reading one; else it is 0."""
    inputs = wire.decoder_inputs(name, prefix, answer_ids, answer_mask)
    labels = inputs.pop("labels")
    decoder = wire.decoders[name]
    logits = decoder(**inputs, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    answer_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    first = labels.shape[1] - answer_ids.shape[1] - 1  # the last anchor position predicts the first answer token
    first_sum = F.cross_entropy(logits[:, first], targets[:, first], reduction="sum")
    if teacher_prompt is None:
        return answer_sum, first_sum, answer_sum.new_zeros(())
    student = logits[:, first:first + answer_ids.shape[1]]  # position first + j predicts answer token j
    prompt_ids, prompt_mask = teacher_prompt
    mask = torch.cat([prompt_mask, answer_mask], dim=1)
    with torch.no_grad():
        teacher = decoder(input_ids=torch.cat([prompt_ids, answer_ids], dim=1), attention_mask=mask,
                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False).logits.float()
    teacher = teacher[:, prompt_ids.shape[1] - 1:-1]  # left padding puts every prompt's end in one column
    kl = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return answer_sum, first_sum, (kl * answer_mask).sum()
