"""Causal-LM training throughput: a Backpack beside transformers' `GPT2LMHeadModel` of the same width, depth and heads
(its contextualizer's), in one run: the price of the sense network and the sense weights.

    python benchmarks/train_backpack.py --compile                   # 384 wide, 6 blocks, 16 senses, seq 128, on a GPU
    python benchmarks/train_backpack.py --device cpu --preset tiny --steps 3 --batch-size 8

Each step is forward + backward + fused AdamW on a fixed batch already on the device (bf16 autocast on a GPU).
MFU counts 6 x the matmul parameters that every token passes through (blocks, sense network, sense weights and the
tied head) + 12 x layers x width x sequence for attention (the Backpack's α adds 2 x k x (d/k) x sequence = 2 x d x
sequence per token more), the same formula for both. Results go to `benchmarks/results/train_backpack_<device>.json`.
"""

import argparse
import json
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from benchmarks.train_mlm import PEAK_BF16_FLOPS, timed  # noqa: E402
from modeling import device_value_checks  # noqa: E402
from modeling.backpack import BackpackConfig, BackpackForCausalLM  # noqa: E402

PRESETS = {"tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_senses=4),
           "small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_senses=16),
           "paper_small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_senses=16)}


def build(name: str, preset: dict, vocab_size: int, seq_len: int):
    torch.manual_seed(0)
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=preset["hidden_size"],
                                          n_layer=preset["num_hidden_layers"], n_head=preset["num_attention_heads"],
                                          attn_implementation="sdpa"))
    return BackpackForCausalLM(BackpackConfig(vocab_size=vocab_size, max_position_embeddings=seq_len, **preset))


def flops_per_token(model, seq_len: int) -> float:
    width = model.config.hidden_size
    layers = model.config.num_hidden_layers
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n
                 and "embed_positions" not in n)  # the tied token embedding is counted once, as the head
    attention = 12 * layers * width * seq_len + (4 * width * seq_len if isinstance(model, BackpackForCausalLM) else 0)
    return 6 * matmul + attention


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)
    ids = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len),
                        generator=torch.Generator().manual_seed(1)).to(device)
    batch = {"input_ids": ids, "labels": ids}
    tokens = args.batch_size * args.seq_len
    results = {}
    for name in ("gpt2", "backpack"):
        model = build(name, PRESETS[args.preset], args.vocab_size, args.seq_len).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        forward = torch.compile(model) if args.compile else model

        def step():
            with autocast():
                loss = forward(**batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with device_value_checks(model, False):  # GPT-2 has no such checks: left alone
            seconds = timed(step, args.steps, args.warmup, device)
        per_token = flops_per_token(model, args.seq_len)
        results[name] = {"seconds_per_step": round(seconds, 5), "tokens_per_s": round(tokens / seconds),
                         "parameters": model.num_parameters(), "flops_per_token": per_token,
                         "mfu": None if peak is None else round(per_token * tokens / seconds / peak, 4)}
        print(f"{name}: {results[name]}", flush=True)
    report = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
              "preset": PRESETS[args.preset], "vocab_size": args.vocab_size, "seq_len": args.seq_len,
              "batch_size": args.batch_size, "compiled": args.compile,
              "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "results": results,
              "backpack_throughput_vs_gpt2": round(results["backpack"]["tokens_per_s"] /
                                                   results["gpt2"]["tokens_per_s"], 3)}
    suffix = "_compiled" if args.compile else ""
    output = Path(args.output or Path(__file__).with_name("results") / f"train_backpack_{device.type}{suffix}.json")
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"backpack / gpt2 tokens/s: {report['backpack_throughput_vs_gpt2']} -> {output}")
    return report


if __name__ == "__main__":
    main()
