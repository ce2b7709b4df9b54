"""What a LatentWire's decoders read when they read a question as text: the question text itself (`qa_text`, which
the wire reads as bytes), a decoder's prompt ((BOS) + text + anchor, `text_prompts`) and left-padded batches of prompts
and answers (`left_padded`). Shared by the training collator (the distillation teacher's prompts) and the
three-condition evaluation (`wire_conditions`), so that both build the very same prompts.
"""

from typing import List, Optional, Sequence

import torch


def qa_text(record: dict) -> str:
    """The text both the wire (as bytes) and a text-prompted decoder read; the anchor follows it."""
    return f"Context: {record['context']}\nQuestion: {record['question']}\n"


def leading_bos(tokenizer) -> List[int]:
    """[BOS] when the decoder's tokenizer starts every text with it (Llama's), else [] (Qwen's, the demo's): a
    text-prompted decoder, and a distillation teacher, read their prompts the way the decoder was trained to."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a").input_ids[:1] == [bos] else []


def text_prompts(tokenizer, texts: Sequence[str], anchor: Sequence[int],
                 budget: Optional[int] = None) -> List[List[int]]:
    """The decoder's prompt for each text, as the demo decoders are trained, the text condition is scored and the
    distillation teacher reads: (BOS) ⊕ the text's first `budget` tokens (all when None) ⊕ the anchor."""
    lead = leading_bos(tokenizer)
    return [lead + ids[:budget] + list(anchor) for ids in tokenizer(list(texts), add_special_tokens=False).input_ids]


def left_padded(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int) -> dict:
    """[pad … prompt | answer … pad] rows: `input_ids`, `attention_mask`, `position_ids` (real tokens counted from 0)
    and `labels` (-100 except on answers). Without answers, a generation batch."""
    width = max(map(len, prompts))
    answer_width = max(map(len, answers)) if answers else 0
    ids, mask, labels = [], [], []
    for index, prompt in enumerate(prompts):
        answer = list(answers[index]) if answers else []
        left, right = width - len(prompt), answer_width - len(answer)
        ids.append([pad_id] * left + list(prompt) + answer + [pad_id] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(answer)) + [0] * right)
        labels.append([-100] * (left + len(prompt)) + answer + [-100] * right)
    mask = torch.tensor(mask)
    batch = {"input_ids": torch.tensor(ids), "attention_mask": mask,
             "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    return {**batch, "labels": torch.tensor(labels)} if answers else batch
