"""Translation by prompting a causal LM: `<src tag> source <tgt tag>` -> the continuation up to EOS (or a newline),
greedy or beam search, scored with the local `metrics/translation` (sacrebleu corpus BLEU and chrF, exact match,
word and character accuracy). Works with any causal LM of the zoo whose training text used the same tags
(`trainers/run_backpack.py` writes `<en> english <fr> french<EOS>`).
"""

from pathlib import Path
from typing import List, Optional, Sequence

import evaluate
import torch

METRIC_DIR = Path(__file__).with_name("metrics") / "translation"


def load_parallel(source_path, target_path, limit: Optional[int] = None):
    """Line-aligned source and target files (no trailing-newline assumptions) -> (sources, targets)."""
    sources = Path(source_path).read_text(encoding="utf-8").splitlines()
    targets = Path(target_path).read_text(encoding="utf-8").splitlines()
    if len(sources) != len(targets):
        raise ValueError(f"{source_path} has {len(sources)} lines, {target_path} {len(targets)}: not line-aligned")
    pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets) if s.strip() and t.strip()]
    pairs = pairs[:limit] if limit is not None else pairs
    return [s for s, _ in pairs], [t for _, t in pairs]


def prompt(source: str, source_tag: str, target_tag: str) -> str:
    return f"{source_tag} {source} {target_tag}"


@torch.no_grad()
def translate(model, tokenizer, sources: Sequence[str], source_tag: str = "<en>", target_tag: str = "<fr>",
              num_beams: int = 1, max_new_tokens: int = 64, batch_size: int = 32) -> List[str]:
    """Continuations of the prompts (left-padded batches, the model's attention mask honoured), decoded without
    special tokens and cut at the first newline."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("translation needs a tokenizer with pad and EOS tokens (EOS ends a translation)")
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None)
    outputs = []
    try:
        for start in range(0, len(sources), batch_size):
            texts = [prompt(source, source_tag, target_tag) for source in sources[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            room = max_new_tokens if limit is None else min(max_new_tokens, limit - batch.input_ids.shape[1])
            if room < 1:
                raise ValueError(f"prompts of {batch.input_ids.shape[1]} tokens leave no room under the model's "
                                 f"max_position_embeddings ({limit})")
            generated = model.generate(**batch, max_new_tokens=room, do_sample=False, num_beams=num_beams,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new_tokens = generated[:, batch.input_ids.shape[1]:]
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                outputs.append(text.split("\n")[0].strip())
    finally:
        tokenizer.padding_side = padding_side
    return outputs


def translation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    return evaluate.load(str(METRIC_DIR)).compute(predictions=list(predictions), references=list(references))


def evaluate_translation(model, tokenizer, sources, references, num_beams=(1,), examples: int = 5, **options) -> dict:
    """{"greedy" or "beam<k>": metrics and the first `examples` (source, reference, hypothesis) triples}."""
    result = {"num_segments": len(sources)}
    for beams in num_beams:
        predictions = translate(model, tokenizer, sources, num_beams=beams, **options)
        scores = translation_metrics(predictions, references)
        scores["examples"] = [dict(source=s, reference=r, hypothesis=h)
                              for s, r, h in list(zip(sources, references, predictions))[:examples]]
        result["greedy" if beams == 1 else f"beam{beams}"] = scores
    return result


def markdown_report(result: dict, title: str = "Translation") -> str:
    lines = [f"## {title}", "", f"{result['num_segments']} segments; corpus BLEU and chrF (sacrebleu), exact match, "
             "word and character accuracy (1 - WER, 1 - CER).", "",
             "| decoding | BLEU | chrF | exact | word acc. | char acc. |", "|---|---:|---:|---:|---:|---:|"]
    for name, scores in result.items():
        if isinstance(scores, dict):
            lines.append(f"| {name} | {scores['bleu']:.2f} | {scores['chrf']:.2f} | {scores['exact_match']:.4f} | "
                         f"{scores['word_accuracy']:.4f} | {scores['char_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"
