"""Sentences/s of hubzoo's batched PLL scorer beside a naive one-forward-per-mask scorer and minicons'
`MaskedLMScorer`, on the same exported model and the same BLiMP sentences; equal scores are asserted.

    python benchmarks/blimp_pll.py --model outputs/ltg_bert_small/export --data ../shared/data/blimp
    python benchmarks/blimp_pll.py --model outputs/ltg_bert_tiny/export   # embedded pairs, CPU

Each comparison runs every scorer under one matmul precision: full fp32 (TF32 off; how hubzoo reports BLiMP), where
the scores must agree to float32 round-off (`--atol`, nats per sentence), and on CUDA also TF32, where each is
compared with the fp32 scores. The naive and minicons scorers see a subset of the sentences (they are slow); ratios
are taken on sentences/s. Results (and the device) go to `benchmarks/results/blimp_pll_<device>.json`.
minicons is not a hubzoo dependency: `pip install --no-deps minicons==0.3.39 wonderwords` (its other requirements are
hubzoo's own).
"""

import argparse
import copy
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from eval_suites.blimp import load_pairs  # noqa: E402
from eval_suites.scoring import MaskedLMScorer  # noqa: E402
from hub_exports import full_fp32_matmuls, load_checkpoint  # noqa: E402
from trainers.embedded_corpus import write_minimal_pairs  # noqa: E402


def sentences_from(data_dir, pairs_per_paradigm: int) -> list:
    pairs = load_pairs(data_dir, limit_per_paradigm=pairs_per_paradigm)
    # Interleaved across paradigms, so that the subset the slow scorers see covers all of them.
    pairs.sort(key=lambda pair: int(pair.pair_id) if pair.pair_id.isdigit() else 0)
    return [sentence for pair in pairs for sentence in (pair.good, pair.bad)]


@torch.no_grad()
def naive_pll(model, tokenizer, sentences) -> list:
    """The textbook loop: one forward pass per masked token, batch size 1."""
    device = next(model.parameters()).device
    scores = []
    for sentence in sentences:
        encoded = tokenizer(sentence, return_special_tokens_mask=True, return_tensors="pt")
        ids = encoded["input_ids"].to(device)
        total = 0.0
        for position in (~encoded["special_tokens_mask"][0].bool()).nonzero().flatten().tolist():
            masked = ids.clone()
            masked[0, position] = tokenizer.mask_token_id
            logits = model(input_ids=masked).logits[0, position].float()
            total += logits.log_softmax(-1)[ids[0, position]].item()
        scores.append(total)
    return scores


def minicons_pll(model, tokenizer, sentences, batch_size: int) -> list:
    from minicons.scorer import MaskedLMScorer as MiniconsScorer

    tokenizer = copy.deepcopy(tokenizer)
    # minicons 0.3.x calls `batch_encode_plus`, which transformers 5 removed; `__call__` is its replacement.
    tokenizer.batch_encode_plus = tokenizer.__call__
    scorer = MiniconsScorer(model, device=str(next(model.parameters()).device), tokenizer=tokenizer)
    scores = []
    for start in range(0, len(sentences), batch_size):
        scores += scorer.sequence_score(sentences[start:start + batch_size], reduction=lambda x: x.sum().item())
    return scores


# TF32 rounds matmul inputs to 10 mantissa bits: a sentence's summed log-probability moves by up to a few 1e-2 nats.
TF32_ATOL = 0.1


@contextmanager
def matmul_precision(precision: str):
    """"fp32": full float32 matmuls (the BLiMP scores hubzoo reports); "tf32": tensor-core TF32, as with Trainer's
    `tf32=True`. Both scorers always run under the same setting."""
    if precision == "fp32":
        with full_fp32_matmuls():
            yield
        return
    matmul = torch.backends.cuda.matmul
    flag = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"  # torch >= 2.9 / older
    saved = getattr(matmul, flag)
    setattr(matmul, flag, "tf32" if flag == "fp32_precision" else True)
    try:
        yield
    finally:
        setattr(matmul, flag, saved)


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


# Dense peaks of the H100/H200 (SXM) by the vendor's datasheets: FP32 on the CUDA cores, TF32 on the tensor cores.
PEAK_FLOPS = {"H100": {"fp32": 67e12, "tf32": 495e12}, "H200": {"fp32": 67e12, "tf32": 495e12}}


def add_flops(result: dict, model, scorer, peak) -> None:
    """Matmul FLOPs of the timed call: 2 x the encoder's matrix weights per position it ran over (padding included)
    plus the vocabulary projection per scored position (the attention scores are not counted), and their fraction
    of the precision's peak."""
    config = model.config
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embedding" not in name)
    head = config.vocab_size * config.hidden_size
    scored = scorer.scored_positions
    flops = 2 * matrices * scorer.forward_tokens + 2 * head * scored
    result["matmul_flops_per_s"] = round(flops / result["seconds"])
    if peak:
        result["fraction_of_peak"] = round(flops / result["seconds"] / peak, 4)


def timed(function, sentences, device) -> tuple:
    start = time.perf_counter()
    function(sentences[:8])  # warm-up: kernels, allocator, lazy inits (and compilation, for a compiled scorer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    scores = function(sentences)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return scores, {"sentences": len(sentences), "seconds": round(seconds, 3),
                    "sentences_per_s": round(len(sentences) / seconds, 1), "warm_up_seconds": round(warm_up, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported hubzoo masked LM folder")
    parser.add_argument("--data", help="BLiMP-format folder (default: the embedded minimal pairs)")
    parser.add_argument("--pairs-per-paradigm", type=int, default=30)
    parser.add_argument("--subset", type=int, default=400, help="sentences given to the minicons scorer")
    parser.add_argument("--naive-subset", type=int, default=100, help="sentences given to the naive scorer")
    parser.add_argument("--token-budget", type=int,
                        help="tokens per forward pass (default: 65536 on CUDA; 2048 on CPU, where larger batches "
                             "only add memory traffic: 1 thread, tiny model: 263 sentences/s at 2048, 149 at 16384)")
    parser.add_argument("--minicons-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--atol", type=float, default=2e-3, help="largest allowed score difference (nats)")
    parser.add_argument("--compile", action="store_true",
                        help="also time MaskedLMScorer(torch_compile=True) (its compilation, on the warm-up sentences, "
                             "is recorded apart)")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/blimp_pll_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    args.token_budget = args.token_budget or (65536 if device.type == "cuda" else 2048)
    model = load_checkpoint(args.model).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = args.data or write_minimal_pairs(Path("outputs") / "benchmark_pairs")
    sentences = sentences_from(data, args.pairs_per_paradigm)
    subset = sentences[:args.subset]

    batched = MaskedLMScorer(model, tokenizer, token_budget=args.token_budget)
    compiled = (MaskedLMScorer(model, tokenizer, token_budget=args.token_budget, torch_compile=True)
                if args.compile else None)
    peaks = next((value for key, value in PEAK_FLOPS.items() if key in device_name(device)), {})
    precisions = {}
    for precision in (["fp32", "tf32"] if device.type == "cuda" else ["fp32"]):
        results = {}
        with matmul_precision(precision):
            scores, results["hubzoo_batched"] = timed(batched.score, sentences, device)
            add_flops(results["hubzoo_batched"], model, batched, peaks.get(precision))
            if compiled is not None:
                torch._dynamo.reset()  # compiled anew under this precision, its time recorded apart
                compiled_scores, results["hubzoo_batched_compiled"] = timed(compiled.score, sentences, device)
                add_flops(results["hubzoo_batched_compiled"], model, compiled, peaks.get(precision))
            minicons_scores, results["minicons"] = timed(
                lambda s: minicons_pll(model, tokenizer, s, args.minicons_batch_size), subset, device)
            if precision == "fp32":
                reference = torch.tensor(scores, dtype=torch.float64)
                naive_scores, results["naive_one_forward_per_mask"] = timed(
                    lambda s: naive_pll(model, tokenizer, s), subset[:args.naive_subset], device)
        compared = {"minicons": minicons_scores}
        compared.update({"naive": naive_scores} if precision == "fp32" else {f"hubzoo_{precision}": scores})
        if compiled is not None:
            compared[f"hubzoo_compiled_{precision}"] = compiled_scores
        differences = {name: (torch.tensor(values, dtype=torch.float64) - reference[:len(values)]).abs().max().item()
                       for name, values in compared.items()}
        ours = results["hubzoo_batched"]["sentences_per_s"]
        precisions[precision] = {
            "scorers": results,
            "speedup_vs_minicons": round(ours / results["minicons"]["sentences_per_s"], 2),
            **({"compiled_speedup_vs_minicons": round(results["hubzoo_batched_compiled"]["sentences_per_s"]
                                                      / results["minicons"]["sentences_per_s"], 2)}
               if compiled is not None else {}),
            **({"speedup_vs_naive": round(ours / results["naive_one_forward_per_mask"]["sentences_per_s"], 2)}
               if precision == "fp32" else {}),
            "max_abs_score_difference_vs_hubzoo_fp32": differences,
            "scores_equal_within": args.atol if precision == "fp32" else TF32_ATOL,
        }
    report = {
        "benchmark": "blimp_pll",
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": str(args.model),
        "model_parameters": model.num_parameters(),
        "data": str(data),
        "sentences": len(sentences),
        "token_budget": args.token_budget,
        "precisions": precisions,
    }
    output = Path(args.output or Path(__file__).parent / "results" / f"blimp_pll_{device.type}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    for precision, result in precisions.items():
        for name, difference in result["max_abs_score_difference_vs_hubzoo_fp32"].items():
            if difference > result["scores_equal_within"]:
                raise SystemExit(f"{precision}: {name} scores differ from hubzoo's fp32 ones by {difference:.2e} nats")
    return report


if __name__ == "__main__":
    main()
