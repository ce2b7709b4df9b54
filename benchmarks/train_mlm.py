"""Masked-LM training throughput: LTG-BERT beside transformers' `BertForMaskedLM` of the same size, in one run.

    python benchmarks/train_mlm.py                      # LTG-BERT small sizes, bf16 autocast on a GPU
    python benchmarks/train_mlm.py --compile            # both models under torch.compile
    python benchmarks/train_mlm.py --device cpu --steps 3 --batch-size 8 --preset tiny

"Same size": same width, depth, heads, vocabulary and sequence length; BERT's GELU feed-forward gets 1.5x LTG-BERT's
`intermediate_size`, so that both feed-forwards hold the same number of weights (GEGLU has three d x I matrices,
GELU two). Each step is forward + backward + fused AdamW on a fixed batch already on the device (15% of tokens
labelled), so data loading is not measured. LTG-BERT is measured as `MaskedLMTrainer` trains it (`ltg_bert`: its
input range checks off, since the collator checks every batch on the CPU; its head on the labelled positions only
(`sparse_prediction`) on CPU, on every position on accelerators, where selecting positions is a host-device sync),
with the other head choice (`ltg_bert_other_head`), and with its own range checks on (`ltg_bert_checked`, as a
standalone forward runs: one host-device sync per check on accelerators). MFU counts 6 x (encoder parameters +
MLM-head parameters, tied vocabulary projection included, times the share of positions the head runs on) + 12 x
layers x width x sequence FLOPs per token, the same formula for every model (LTG-BERT's relative-position terms are
extra work it is not credited for). Results go to `benchmarks/results/train_mlm_<device>.json`.
"""

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from modeling import device_value_checks  # noqa: E402
from modeling.ltg_bert import LtgBertConfig, LtgBertForMaskedLM  # noqa: E402

PRESETS = {  # width, depth, heads, LTG-BERT intermediate size
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=320),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core peaks


def build_models(preset: dict, vocab_size: int, seq_len: int) -> dict:
    torch.manual_seed(0)
    ltg = LtgBertForMaskedLM(LtgBertConfig(vocab_size=vocab_size, max_position_embeddings=max(512, seq_len),
                                           pad_token_id=0, **preset))
    bert = BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=preset["hidden_size"], num_hidden_layers=preset["num_hidden_layers"],
        num_attention_heads=preset["num_attention_heads"], intermediate_size=preset["intermediate_size"] * 3 // 2,
        max_position_embeddings=max(512, seq_len), pad_token_id=0, attn_implementation="sdpa"))
    return {"ltg_bert": ltg, "bert": bert}


def flops_per_token(model, seq_len: int, head_fraction: float) -> float:
    """6 x (body parameters + head parameters x share of positions the head runs on) + attention scores."""
    config = model.config
    head = config.vocab_size * config.hidden_size  # the tied vocabulary projection, listed under the embeddings
    body = 0
    for name, parameter in model.named_parameters():
        if name.startswith(("lm_head.", "cls.")):
            head += parameter.numel()
        elif "embedding" not in name:
            body += parameter.numel()
    return 6 * (body + head * head_fraction) + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def make_batch(vocab_size: int, batch_size: int, seq_len: int, device) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=generator)
    chosen = torch.rand(batch_size, seq_len, generator=generator) < 0.15
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    input_ids = torch.where(chosen, torch.full_like(input_ids, 4), input_ids)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


def measure(model, batch, steps: int, warmup: int, device, autocast, compile_model: bool, **forward_options) -> float:
    """Seconds per optimizer step, averaged over `steps` after `warmup`."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile_model else model

    def step():
        with autocast():
            loss = forward(**batch, **forward_options).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, steps, warmup, device)


def timed(function, steps: int, warmup: int, device) -> float:
    """Seconds per call of `function`, averaged over `steps` calls after `warmup` (the device synchronised)."""
    for _ in range(warmup):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def ratio(results: dict, label: str) -> float:
    return round(results[label]["tokens_per_s"] / results["bert"]["tokens_per_s"], 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--only", help="comma-separated subset of the runs (ltg_bert, ltg_bert_other_head, "
                                       "ltg_bert_checked, bert); bert is always kept, as the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/train_mlm_<device>[_compiled].json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as Trainer(tf32=True); bf16 autocast does the rest
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    batch = make_batch(args.vocab_size, args.batch_size, args.seq_len, device)
    tokens_per_step = args.batch_size * args.seq_len

    models = build_models(PRESETS[args.preset], args.vocab_size, args.seq_len)
    trainer_head = {"sparse_prediction": True} if device.type == "cpu" else {}  # as MaskedLMTrainer chooses
    other_head = {} if trainer_head else {"sparse_prediction": True}
    runs = {  # label -> (model, forward options, the model's own range checks)
        "ltg_bert": (models["ltg_bert"], trainer_head, False),
        "ltg_bert_other_head": (models["ltg_bert"], other_head, False),
        "ltg_bert_checked": (models["ltg_bert"], trainer_head, True),
        "bert": (models["bert"], {}, False),
    }
    if args.only:
        runs = {label: run for label, run in runs.items() if label in args.only.split(",") + ["bert"]}
    results = {}
    for label, (model, options, checked) in runs.items():
        with device_value_checks(model, checked):
            seconds = measure(model, batch, args.steps, args.warmup, device, autocast, args.compile, **options)
        if args.compile:
            torch._dynamo.reset()  # each run compiles its own graphs
        labelled_share = (batch["labels"] != -100).float().mean().item()
        per_token = flops_per_token(model, args.seq_len, labelled_share if options else 1.0)
        results[label] = {
            "parameters": model.num_parameters(),
            "seconds_per_step": round(seconds, 5),
            "tokens_per_s": round(tokens_per_step / seconds),
            "model_tflops_per_s": round(per_token * tokens_per_step / seconds / 1e12, 2),
            "mfu": round(per_token * tokens_per_step / seconds / peak, 4) if peak else None,
        }
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report = {
        "benchmark": "train_mlm", "device": name, "device_type": device.type, "torch": torch.__version__,
        "transformers": transformers.__version__, "preset": args.preset, "config": PRESETS[args.preset],
        "vocab_size": args.vocab_size, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "steps": args.steps, "compiled": args.compile,
        "precision": "bf16 autocast + tf32" if device.type == "cuda" else "fp32",
        "peak_flops_assumed": peak, "models": results,
        "ltg_bert_head": "sparse" if trainer_head else "dense",
        **{f"{label}_over_bert_tokens_per_s": ratio(results, label) for label in runs if label != "bert"},
    }
    suffix = "_compiled" if args.compile else ""
    output = Path(args.output or Path(__file__).parent / "results" / f"train_mlm_{device.type}{suffix}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
