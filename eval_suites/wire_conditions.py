"""Question answering through a LatentWire, scored against the two baselines that say whether the wire carries
anything: per decoder, three conditions over the same questions and the same anchor —

* `text`: the decoder reads the whole text prompt (context and question) in its own tokens;
* `latent`: the decoder reads the wire's M prefix vectors of the same text;
* `truncated`: the decoder reads the first M tokens of the text prompt, the same number of positions as the latent.

Each condition reports SQuAD EM/F1 of greedy answers, the NLL per token of the first gold answer (+ EOS) under teacher
forcing, and whether the gold's first token is the top-1 / in the top-5 after the anchor; plus the compression ratio
(text prompt tokens / M). Text prompts are left-padded so that the last prompt token, and so the first answer token,
sits in the same column for every row; positions count real tokens only.
"""

import json
from pathlib import Path
from typing import List, Sequence

import torch
import torch.nn.functional as F

from eval_suites.squad import exact_match, f1_score, squad_metrics, write_predictions_jsonl
from eval_suites.wire_prompts import left_padded, qa_text, text_prompts

CONDITIONS = ("text", "latent", "truncated")


def gold_scores(logits: torch.Tensor, labels: torch.Tensor, first: int) -> dict:
    """Per row: summed NLL and count of the labelled tokens (logits at t score the label at t + 1), and the rank of
    the first answer token (labels[:, first + 1]) among the logits at `first`."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(-1)
    gold_first = targets[:, first]
    rank = (logits[:, first] > logits[:, first].gather(1, gold_first[:, None])).sum(-1)
    return {"nll": nll.tolist(), "tokens": targets.ne(-100).sum(-1).tolist(), "rank": rank.tolist()}


def decode_answers(tokenizer, generated: torch.Tensor) -> List[str]:
    """Generated ids up to the first EOS, decoded without special tokens."""
    answers = []
    for row in generated.tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id)]
        answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def run_condition(wire, name: str, condition: str, records: Sequence[dict], byte_tokenizer,
                  generate_options: dict) -> dict:
    """{"predictions", "nll", "tokens", "rank", "prompt_positions"} of decoder `name` on one batch of records."""
    decoder, tokenizer = wire.decoders[name], wire.decoder_tokenizers[name]
    device = decoder.get_input_embeddings().weight.device
    anchor = list(wire.config.decoder(name)["anchor_ids"])
    answers = [tokenizer(r["answers"][0], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
               for r in records]
    if condition == "latent":
        texts = byte_tokenizer([qa_text(r) for r in records], padding=True, return_tensors="pt").to(device)
        prefix = wire.adapt(wire(**texts).last_hidden_state, name)
        width = max(map(len, answers))
        answer_ids = torch.tensor([a + [0] * (width - len(a)) for a in answers], device=device)
        answer_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers], device=device)
        inputs = wire.decoder_inputs(name, prefix, answer_ids, answer_mask)
        labels = inputs.pop("labels")
        first = inputs["inputs_embeds"].shape[1] - width - 1
        generated = wire.generate_from_prefix(name, prefix, **generate_options)
        positions = [prefix.shape[1] + len(anchor) + bool(wire.config.decoder(name)["bos_after_prefix"])] * len(records)
    else:
        # The original's token budget: the prompt's first M tokens (at small M, context only; the question is cut).
        budget = wire.config.num_latents if condition == "truncated" else None
        prompts = text_prompts(tokenizer, [qa_text(r) for r in records], anchor, budget)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        inputs = {k: v.to(device) for k, v in left_padded(prompts, answers, pad).items()}
        labels = inputs.pop("labels")
        first = max(map(len, prompts)) - 1
        prompt_batch = {k: v.to(device) for k, v in left_padded(prompts, [], pad).items()}
        prompt_batch.pop("position_ids")  # generate derives them from the mask, as in this batch
        generated = decoder.generate(**prompt_batch, pad_token_id=pad, **generate_options)[:, prompt_batch[
            "input_ids"].shape[1]:]
        positions = list(map(len, prompts))
    scores = gold_scores(decoder(**inputs, use_cache=False).logits, labels, first)
    return {"predictions": decode_answers(tokenizer, generated), "prompt_positions": positions, **scores}


def evaluate_conditions(wire, records: Sequence[dict], byte_tokenizer, conditions: Sequence[str] = CONDITIONS,
                        batch_size: int = 16, max_new_tokens: int = 12, min_new_tokens: int = 0) -> dict:
    """{"decoders": {name: {condition: metrics}, ...}, "num_questions", "num_latents", "predictions": [...]}.
    Greedy decoding, with the decoders' own defaults that would treat the conditions unequally switched off (a
    repetition penalty counts a text prompt's tokens, not a prefix's: copying the answer from the context would be
    penalised in the text condition only). `min_new_tokens` bans EOS for the first steps (the original's early-EOS
    ban)."""
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; known: {CONDITIONS}")
    options = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False, num_beams=1,
                   repetition_penalty=1.0, no_repeat_ngram_size=0)
    result = {"num_questions": len(records), "num_latents": wire.config.num_latents, "decoders": {}}
    predictions = []
    for name in wire.decoders:
        tokenizer = wire.decoder_tokenizers[name]
        text_tokens = [len(tokenizer(qa_text(r), add_special_tokens=False).input_ids) for r in records]
        per_decoder = {"compression": sum(text_tokens) / len(text_tokens) / wire.config.num_latents}
        for condition in conditions:
            runs = [run_condition(wire, name, condition, records[start:start + batch_size], byte_tokenizer, options)
                    for start in range(0, len(records), batch_size)]
            merged = {key: [value for run in runs for value in run[key]] for key in runs[0]}
            per_decoder[condition] = condition_metrics(merged, records)
            predictions += [{"id": r["id"], "decoder": name, "condition": condition, "prediction": p,
                             "answers": r["answers"], "exact_match": max(exact_match(p, g) for g in r["answers"]),
                             "f1": max(f1_score(p, g) for g in r["answers"])}
                            for r, p in zip(records, merged["predictions"])]
        result["decoders"][name] = per_decoder
    result["predictions"] = predictions
    return result


def condition_metrics(merged: dict, records: Sequence[dict]) -> dict:
    scores = squad_metrics(merged["predictions"], [r["answers"] for r in records])
    ranks = torch.tensor(merged["rank"])
    return {"exact_match": scores["exact_match"], "f1": scores["f1"],
            "nll_per_token": sum(merged["nll"]) / max(1, sum(merged["tokens"])),
            "first_token_top1": (ranks < 1).float().mean().item(), "first_token_top5": (ranks < 5).float().mean().item(),
            "mean_prompt_positions": sum(merged["prompt_positions"]) / len(records)}


def write_results(result: dict, output) -> Path:
    """`metrics.json` (everything but the predictions) and `predictions.jsonl` in `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_predictions_jsonl(output / "predictions.jsonl", result["predictions"])
    metrics = {key: value for key, value in result.items() if key != "predictions"}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return output


def markdown_report(result: dict, title: str = "Question answering through the wire") -> str:
    lines = [f"# {title}", "", f"{result['num_questions']} questions, M = {result['num_latents']} latents.", "",
             "| decoder | condition | EM | F1 | NLL/token (gold) | first-token top-1 | top-5 | prompt positions |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, per_decoder in result["decoders"].items():
        for condition in CONDITIONS:
            if condition in per_decoder:
                m = per_decoder[condition]
                lines.append(f"| {name} | {condition} | {m['exact_match']:.1f} | {m['f1']:.1f} | "
                             f"{m['nll_per_token']:.3f} | {m['first_token_top1']:.3f} | {m['first_token_top5']:.3f} | "
                             f"{m['mean_prompt_positions']:.1f} |")
        lines.append(f"| {name} | compression (text tokens / M) | {per_decoder['compression']:.2f}× | | | | | |")
    return "\n".join(lines) + "\n"
