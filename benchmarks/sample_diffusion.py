"""Sampling speed of the masked diffusion LMs, side by side in one run: BD3-LM with its KV cache (CUDA graph, and
eager) and without it; MDLM's `ddpm` and `ddpm_cache` (CUDA graph, and eager), and its order-based samplers.

    python benchmarks/sample_diffusion.py                          # small models, bf16 autocast, H200
    python benchmarks/sample_diffusion.py --device cpu --preset tiny --lengths 64 --batch-sizes 1 2

For each length and batch size every variant draws the same number of tokens from all-mask with randomly initialised
models of the `train_diffusion.py` presets (speed does not depend on the weights, except through how often
`ddpm_cache` may skip the denoiser, which is recorded). BD3-LM takes `block_size` ancestral steps per block; MDLM
takes as many steps as tokens (one revealed per step on average) and the confidence sampler `--tokens-per-step`. Time
includes the graph capture of each call, which a user pays too; each variant runs once untimed first. Equality of the
graph-captured and eager draws (same seed) is recorded. MFU counts the denoiser work actually run (forward passes only:
2 x parameters x tokens through the trunk and output layer + attention). Results go to
`benchmarks/results/sample_diffusion_<device>.json`.
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

from benchmarks.train_diffusion import MASK_ID, PRESETS  # noqa: E402
from benchmarks.train_mlm import PEAK_BF16_FLOPS  # noqa: E402
from modeling.bd3lm import Bd3lmConfig, Bd3lmForMaskedDiffusionLM  # noqa: E402
from modeling.mdlm import MdlmConfig, MdlmForMaskedDiffusionLM  # noqa: E402
from modeling.bd3lm import modeling_bd3lm  # noqa: E402
from modeling.mdlm import modeling_mdlm  # noqa: E402

GRAPHED_CALLS = (modeling_mdlm.CudaGraphedCall, modeling_bd3lm.CudaGraphedCall)  # each exported file has its copy


def build(preset: dict, vocab_size: int, length: int, block_size: int, device):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, mask_token_id=MASK_ID, pad_token_id=0, bos_token_id=1,
                  max_position_embeddings=length, zero_init_modulation=False, **preset)
    return (MdlmForMaskedDiffusionLM(MdlmConfig(**common)).to(device).eval(),
            Bd3lmForMaskedDiffusionLM(Bd3lmConfig(**common, block_size=block_size)).to(device).eval())


class ForwardCounter:
    """Tokens that went through the denoiser's trunk, and the attention's query x key products: a hook on the first
    block counts eager calls (and the graph's warm-up and capture); a replayed graph runs no hook, so its replays are
    counted at `CudaGraphedCall` (each modeling file's copy) with the key length its capture saw."""

    def __init__(self, model):
        self.tokens = self.attention = self.keys = 0
        trunk = getattr(model, "mdlm", None) or model.bd3lm
        self.hook = trunk.layers[0].register_forward_hook(self.count)
        self.replays = [graphed.__call__ for graphed in GRAPHED_CALLS]
        for graphed_class, replay in zip(GRAPHED_CALLS, self.replays):
            graphed_class.__call__ = self.counted(replay)

    def counted(self, replay):
        def counted_replay(graphed, *inputs):
            self.tokens += inputs[0].numel()
            self.attention += inputs[0].numel() * self.keys
            return replay(graphed, *inputs)

        return counted_replay

    def count(self, module, inputs, output):
        hidden, key = inputs[0], output[1]
        self.keys = key.shape[2]
        self.tokens += hidden.shape[0] * hidden.shape[1]
        self.attention += hidden.shape[0] * hidden.shape[1] * self.keys

    def remove(self):
        self.hook.remove()
        for graphed_class, replay in zip(GRAPHED_CALLS, self.replays):
            graphed_class.__call__ = replay


def forward_flops(model, counter: ForwardCounter) -> float:
    config = model.config
    body = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    head = config.vocab_size * config.hidden_size
    # the output layer runs on every token of a call except in BD3-LM's uncached pass (logits_to_keep)
    return 2 * (body + head) * counter.tokens + 4 * config.num_hidden_layers * config.hidden_size * counter.attention


def measure(run, model, device, peak) -> dict:
    run()  # untimed: CUDA/cuBLAS initialisation, autotuning
    counter = ForwardCounter(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sample = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    counter.remove()
    flops = forward_flops(model, counter)
    return {"seconds": round(seconds, 4), "tokens_per_s": round(sample.numel() / seconds, 1),
            "denoiser_tokens": counter.tokens, "mask_tokens_in_samples": int((sample == MASK_ID).sum()),
            "mfu": round(flops / seconds / peak, 5) if peak else None, "_sample": sample}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens-per-step", type=int, default=4, help="the confidence sampler's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/sample_diffusion_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    runs = []
    report = {
        "benchmark": "sample_diffusion", "device": name, "device_type": device.type, "torch": torch.__version__,
        "transformers": transformers.__version__, "preset": args.preset, "config": PRESETS[args.preset],
        "vocab_size": args.vocab_size, "block_size": args.block_size, "tokens_per_step": args.tokens_per_step,
        "precision": "bf16 autocast + tf32" if device.type == "cuda" else "fp32", "peak_flops_assumed": peak,
        "runs": runs,
    }
    output = Path(args.output or Path(__file__).parent / "results" / f"sample_diffusion_{device.type}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    for length in args.lengths:
        mdlm, bd3lm = build(PRESETS[args.preset], args.vocab_size, length, args.block_size, device)
        for batch in args.batch_sizes:
            variants = {
                "bd3lm_kv_cache": (bd3lm, dict(use_cache=True)),
                "bd3lm_kv_cache_eager": (bd3lm, dict(use_cache=True, cuda_graphs=False)),
                "bd3lm_no_cache": (bd3lm, dict(use_cache=False)),
                "mdlm_ddpm": (mdlm, dict(sampler="ddpm", num_steps=length)),
                "mdlm_ddpm_cache": (mdlm, dict(sampler="ddpm_cache", num_steps=length)),
                "mdlm_ddpm_eager": (mdlm, dict(sampler="ddpm", num_steps=length, cuda_graphs=False)),
                "mdlm_ddpm_cache_eager": (mdlm, dict(sampler="ddpm_cache", num_steps=length, cuda_graphs=False)),
                "mdlm_confidence": (mdlm, dict(sampler="confidence", tokens_per_step=args.tokens_per_step)),
                "mdlm_first_hitting": (mdlm, dict(sampler="first_hitting")),
            }
            results = {}
            for label, (model, options) in variants.items():
                def run(model=model, options=options):
                    with autocast():
                        return model.sample(batch, length, seed=0, **options)

                results[label] = measure(run, model, device, peak)
                print(label, length, batch, {k: v for k, v in results[label].items() if k != "_sample"}, flush=True)
            same = {"bd3lm_kv_cache_graph_equals_eager": torch.equal(results["bd3lm_kv_cache"]["_sample"],
                                                                     results["bd3lm_kv_cache_eager"]["_sample"]),
                    "bd3lm_kv_cache_equals_no_cache": torch.equal(results["bd3lm_kv_cache"]["_sample"],
                                                                  results["bd3lm_no_cache"]["_sample"]),
                    "mdlm_ddpm_graph_equals_eager": torch.equal(results["mdlm_ddpm"]["_sample"],
                                                                results["mdlm_ddpm_eager"]["_sample"]),
                    "mdlm_ddpm_cache_equals_ddpm": torch.equal(results["mdlm_ddpm"]["_sample"],
                                                               results["mdlm_ddpm_cache"]["_sample"])}
            speed = {label: result["tokens_per_s"] for label, result in results.items()}
            for result in results.values():
                del result["_sample"]
            runs.append({
                "length": length, "batch_size": batch, **results, "draws_equal": same,
                "kv_cache_over_no_cache": round(speed["bd3lm_kv_cache"] / speed["bd3lm_no_cache"], 3),
                "kv_cache_eager_over_no_cache": round(speed["bd3lm_kv_cache_eager"] / speed["bd3lm_no_cache"], 3),
                "ddpm_cache_over_ddpm": round(speed["mdlm_ddpm_cache"] / speed["mdlm_ddpm"], 3),
                "ddpm_cache_over_ddpm_eager": round(speed["mdlm_ddpm_cache_eager"] / speed["mdlm_ddpm_eager"], 3),
                "ddpm_graph_over_eager": round(speed["mdlm_ddpm"] / speed["mdlm_ddpm_eager"], 3),
            })
            output.write_text(json.dumps(report, indent=2) + "\n")  # after every run: a cut-off run keeps the rest
        del mdlm, bd3lm
    return report


if __name__ == "__main__":
    main()
