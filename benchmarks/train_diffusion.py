"""Masked-diffusion training and sampling throughput: MDLM and BD3-LM beside transformers' `BertForMaskedLM` of the
same size, in one run.

    python benchmarks/train_diffusion.py                   # small sizes, bf16 autocast on a GPU
    python benchmarks/train_diffusion.py --compile         # every model under torch.compile
    python benchmarks/train_diffusion.py --device cpu --preset tiny --steps 2 --batch-size 4 --seq-len 64

"Same size": same width, depth, heads, vocabulary and sequence length; BERT's GELU feed-forward is 4x wide like the
DiT's. A training step is what `MaskedDiffusionTrainer` does (draw t and the masks on the device, forward, the NELBO,
backward, fused AdamW) on a fixed batch already on the device; BERT's is an MLM step with 15% of positions
labelled. Both compute the vocabulary projection at every position. MFU counts 6 x (non-embedding parameters +
output projection) + 12 x layers x width x attended length FLOPs per token; BD3-LM's step runs its blocks over
x_t (+) x_0 (twice the tokens, attention over 2L) and is credited for that work, while its tokens/s counts the L
training tokens, the number a user compares. Sampling: tokens per second of MDLM's `ddpm` and `ddpm_cache` samplers
and of BD3-LM's block sampler with and without its KV cache, at a given number of denoising steps. Results go to
`benchmarks/results/train_diffusion_<device>[_compiled].json`.
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
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from benchmarks.train_mlm import PEAK_BF16_FLOPS, timed  # noqa: E402
from modeling import device_value_checks, diffusion_policy  # noqa: E402
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM  # noqa: E402
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM, masked_diffusion_nelbo  # noqa: E402

PRESETS = {  # width, depth, heads, conditioning width
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, cond_dim=64),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, cond_dim=128),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, cond_dim=128),
}
MASK_ID = 4


def build_models(preset: dict, vocab_size: int, seq_len: int, block_size: int) -> dict:
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, mask_token_id=MASK_ID, pad_token_id=0, bos_token_id=1,
                  max_position_embeddings=seq_len,
                  zero_init_modulation=False, **preset)
    bert = BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=preset["hidden_size"], num_hidden_layers=preset["num_hidden_layers"],
        num_attention_heads=preset["num_attention_heads"], intermediate_size=4 * preset["hidden_size"],
        max_position_embeddings=max(512, seq_len), pad_token_id=0, attn_implementation="sdpa"))
    return {"mdlm": MdlmForMaskedDiffusionLM(MdlmConfig(**common)),
            "bd3lm": Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**common, block_size=block_size)), "bert": bert}


def flops_per_token(model, seq_len: int) -> float:
    config, policy = model.config, diffusion_policy(model)
    blockwise = policy is not None and policy.blockwise
    attended = 2 * seq_len if blockwise else seq_len
    body = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name
               and not name.startswith("cls."))
    head = config.vocab_size * config.hidden_size
    if blockwise:  # the trunk runs over x_t and x_0, the output projection over x_t only
        return 6 * (2 * body + head) + 12 * config.num_hidden_layers * config.hidden_size * attended * 2
    return 6 * (body + head) + 12 * config.num_hidden_layers * config.hidden_size * attended


def diffusion_step(model, forward, clean, generator):
    """One NELBO evaluation as MaskedDiffusionTrainer computes it (noise drawn on the device by the model's policy)."""
    policy = diffusion_policy(model)
    noisy, timesteps = policy.draw_noise(model, clean, generator, training=True)
    logits = forward(input_ids=noisy, timesteps=timesteps, **policy.forward_inputs(clean)).logits
    weights = policy.nelbo_weights(model, timesteps)
    return masked_diffusion_nelbo(logits, noisy, clean, weights, MASK_ID).sum() / clean.numel()


def measure_training(model, clean, steps, warmup, device, autocast, compile_model) -> float:
    """Seconds per optimizer step, averaged over `steps` after `warmup`."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile_model else model
    generator = torch.Generator(device=device).manual_seed(0)
    labels = torch.where(torch.rand(clean.shape, generator=generator, device=device) < 0.15, clean, -100)

    def step():
        with autocast():
            if diffusion_policy(model) is None:  # the BERT baseline
                loss = forward(input_ids=clean.masked_fill(labels != -100, MASK_ID), labels=labels).loss
            else:
                loss = diffusion_step(model, forward, clean, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, steps, warmup, device)


def measure_sampling(models, device, autocast, num_samples, seq_len, steps) -> dict:
    """Generated tokens per second of each sampler (one timed run after one warm-up run)."""
    runs = {
        "mdlm_ddpm": lambda: models["mdlm"].sample(num_samples, seq_len, steps, sampler="ddpm", seed=0),
        "mdlm_ddpm_cache": lambda: models["mdlm"].sample(num_samples, seq_len, steps, sampler="ddpm_cache", seed=0),
        "bd3lm_kv_cache": lambda: models["bd3lm"].sample(num_samples, seq_len, seed=0),
        "bd3lm_no_cache": lambda: models["bd3lm"].sample(num_samples, seq_len, use_cache=False, seed=0),
    }
    results = {}
    for label, run in runs.items():
        model = models[label.split("_")[0]].to(device).eval()
        with autocast(), device_value_checks(model, False):
            seconds = timed(run, 1, 1, device)
        results[label] = {"seconds": round(seconds, 3), "tokens_per_s": round(num_samples * seq_len / seconds)}
        model.to("cpu")
    results["ddpm_cache_over_ddpm"] = round(results["mdlm_ddpm_cache"]["tokens_per_s"]
                                            / results["mdlm_ddpm"]["tokens_per_s"], 3)
    results["kv_cache_over_no_cache"] = round(results["bd3lm_kv_cache"]["tokens_per_s"]
                                              / results["bd3lm_no_cache"]["tokens_per_s"], 3)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--sample-count", type=int, default=16, help="sequences per sampling run (0: skip)")
    parser.add_argument("--sample-steps", type=int, default=1024, help="MDLM denoising steps per sampling run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/train_diffusion_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as Trainer(tf32=True); bf16 autocast does the rest
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    clean = torch.randint(5, args.vocab_size, (args.batch_size, args.seq_len),
                          generator=torch.Generator().manual_seed(1)).to(device)
    models = build_models(PRESETS[args.preset], args.vocab_size, args.seq_len, args.block_size)
    tokens_per_step = args.batch_size * args.seq_len
    training = {}
    for label, model in models.items():
        with device_value_checks(model, False):  # the trainer's collator checks ids on the CPU
            seconds = measure_training(model, clean, args.steps, args.warmup, device, autocast, args.compile)
        if args.compile:
            torch._dynamo.reset()
        per_token = flops_per_token(model, args.seq_len)
        training[label] = {
            "parameters": model.num_parameters(), "seconds_per_step": round(seconds, 5),
            "tokens_per_s": round(tokens_per_step / seconds),
            "model_tflops_per_s": round(per_token * tokens_per_step / seconds / 1e12, 2),
            "mfu": round(per_token * tokens_per_step / seconds / peak, 4) if peak else None,
        }
        model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = {
        "benchmark": "train_diffusion", "device": name, "device_type": device.type, "torch": torch.__version__,
        "transformers": transformers.__version__, "preset": args.preset, "config": PRESETS[args.preset],
        "vocab_size": args.vocab_size, "seq_len": args.seq_len, "block_size": args.block_size,
        "batch_size": args.batch_size, "steps": args.steps, "compiled": args.compile,
        "precision": "bf16 autocast + tf32" if device.type == "cuda" else "fp32", "peak_flops_assumed": peak,
        "training": training,
        "mdlm_over_bert_tokens_per_s": round(training["mdlm"]["tokens_per_s"] / training["bert"]["tokens_per_s"], 3),
        "bd3lm_over_bert_tokens_per_s": round(training["bd3lm"]["tokens_per_s"] / training["bert"]["tokens_per_s"],
                                              3),
    }
    if args.sample_count:
        report["sampling"] = {"num_samples": args.sample_count, "length": args.seq_len,
                              "mdlm_steps": args.sample_steps, "bd3lm_steps_per_block": args.block_size,
                              **measure_sampling(models, device, autocast, args.sample_count, args.seq_len,
                                                 args.sample_steps)}
    suffix = "_compiled" if args.compile else ""
    output = Path(args.output or Path(__file__).parent / "results" / f"train_diffusion_{device.type}{suffix}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
