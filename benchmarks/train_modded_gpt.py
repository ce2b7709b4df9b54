"""Causal-LM training throughput: the modded GPT beside transformers' `GPT2LMHeadModel` of the same size, in one run.

    python benchmarks/train_modded_gpt.py --compile             # 124M, seq 1024, bf16 autocast, on a GPU
    python benchmarks/train_modded_gpt.py --device cpu --preset tiny --seq-len 128 --batch-size 4 --steps 3

"Same size": same width, depth, MLP width, sequence length and (GPT-2's) vocabulary; the modded GPT keeps its own
choices (6 heads x 128, ReLU², one block without attention, value embeddings, untied head over the vocabulary
padded to a multiple of 128). Each step is forward + backward + optimizer step on a fixed batch already on the device
(random GPT-2 ids with an EOT every ~300 tokens, so packed documents), so data loading is not measured. Runs:

* `gpt2`: `GPT2LMHeadModel` (SDPA attention, causal across the packed documents), fused AdamW.
* `modded_gpt`: as `CausalLMTrainer` trains it, document-masked attention (an explicit boolean mask, so SDPA's
  memory-efficient kernel), fused AdamW; `modded_gpt_muon`: the same with Muon + AdamW.
* `modded_gpt_flex`: document-masked with `attn_implementation="flex_attention"` (FlexAttention block masks).
* `modded_gpt_causal`: without document masking (`eot_token_id=None`: SDPA's flash kernel, like GPT-2).

MFU counts 6 x (matmul parameters: blocks and head, embeddings excluded) + 12 x attention layers x width x sequence
FLOPs per token, the same formula for every model. Results go to `benchmarks/results/train_modded_gpt_<device>.json`.
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
from modeling.modded_gpt import ModdedGptConfig, ModdedGptForCausalLM  # noqa: E402
from trainers.muon import MuonWithAdamW, muon_param_groups  # noqa: E402

PRESETS = {"tiny": dict(hidden_size=128, num_hidden_layers=4, heads=(4, 4)),
           "124m": dict(hidden_size=768, num_hidden_layers=12, heads=(12, 6))}  # (GPT-2 heads, modded heads)
VOCAB, EOT = 50257, 50256


def build(name: str, preset: dict, seq_len: int):
    torch.manual_seed(0)
    width, depth = preset["hidden_size"], preset["num_hidden_layers"]
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=seq_len, n_embd=width, n_layer=depth,
                                          n_head=preset["heads"][0], attn_implementation="sdpa"))
    heads = preset["heads"][1]
    config = ModdedGptConfig(vocab_size=128 * -(-VOCAB // 128), tokenizer_vocab_size=VOCAB, hidden_size=width,
                             num_hidden_layers=depth, num_attention_heads=heads, head_dim=width // heads,
                             max_position_embeddings=seq_len, zero_init_projections=False,
                             eot_token_id=None if name == "modded_gpt_causal" else EOT,
                             attn_implementation="flex_attention" if name == "modded_gpt_flex" else "sdpa")
    return ModdedGptForCausalLM(config)


def matmul_flops_per_token(model, seq_len: int) -> float:
    config = model.config
    if isinstance(model, GPT2LMHeadModel):
        body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n)
        head, attention_layers, width = model.lm_head.weight.numel(), config.n_layer, config.n_embd
    else:
        body = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n)
        head, width = model.lm_head.weight.numel(), config.hidden_size
        attention_layers = config.num_hidden_layers - len(config.layers_without_attention)
    return 6 * (body + head) + 12 * attention_layers * width * seq_len


def make_batch(batch_size: int, seq_len: int, device) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, EOT, (batch_size, seq_len), generator=generator)
    input_ids[torch.rand(batch_size, seq_len, generator=generator) < 1 / 300] = EOT
    return {"input_ids": input_ids.to(device), "labels": input_ids.to(device)}


def measure(name, model, batch, args, device, autocast) -> float:
    model.to(device).train()
    if name == "modded_gpt_muon":
        optimizer = MuonWithAdamW(muon_param_groups(model, argparse.Namespace(
            learning_rate=1e-4, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, weight_decay=0.0,
            muon_learning_rate=0.05, muon_momentum=0.95, muon_weight_decay=0.0)))
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model

    def step():
        with autocast():
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    checks = device_value_checks(model, False) if hasattr(model, "check_values_on_device") else nullcontext()
    with checks:  # as CausalLMTrainer: its collator checked the ids on the CPU
        return timed(step, args.steps, args.warmup, device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="124m")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--only", help="comma-separated subset (modded_gpt, modded_gpt_flex, modded_gpt_muon, "
                                       "modded_gpt_causal); "
                                       "gpt2 is always kept, as the reference")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/train_modded_gpt_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)
    batch = make_batch(args.batch_size, args.seq_len, device)
    tokens = args.batch_size * args.seq_len
    names = ["gpt2", "modded_gpt", "modded_gpt_flex", "modded_gpt_muon", "modded_gpt_causal"]
    if args.only:
        names = [n for n in names if n == "gpt2" or n in args.only.split(",")]
    results = {}
    for name in names:
        model = build(name, PRESETS[args.preset], args.seq_len)
        seconds = measure(name, model, batch, args, device, autocast)
        per_token = matmul_flops_per_token(model, args.seq_len)
        results[name] = {"seconds_per_step": round(seconds, 5), "tokens_per_s": round(tokens / seconds),
                         "parameters": model.num_parameters(), "flops_per_token": per_token,
                         "mfu": None if peak is None else round(per_token * tokens / seconds / peak, 4),
                         "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                         if device.type == "cuda" else None}
        print(f"{name}: {results[name]}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    reference = results["gpt2"]["tokens_per_s"]
    report = {
        "device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
        "preset": args.preset, "seq_len": args.seq_len, "batch_size": args.batch_size, "compiled": args.compile,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32", "steps": args.steps,
        "results": results,
        "throughput_vs_gpt2": {name: round(r["tokens_per_s"] / reference, 3) for name, r in results.items()},
    }
    suffix = "_compiled" if args.compile else ""
    output = Path(args.output or Path(__file__).with_name("results") / f"train_modded_gpt_{device.type}{suffix}.json")
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["throughput_vs_gpt2"]), "->", output)
    return report


if __name__ == "__main__":
    main()
