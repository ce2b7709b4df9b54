"""Training throughput through the run scripts' own Trainer path, eager beside torch.compile and CUDA graphs, in one
run: `run_ltg_bert.py trainers/configs/ltg_bert_small.yaml` and `run_mdlm.py trainers/configs/mdlm_small.yaml`,
each trained `--steps` optimizer steps in each mode, on the configs' data (`.gpu_data`), batches and shapes.

    python benchmarks/train_compiled.py                                   # on a GPU: both models, three modes
    python benchmarks/train_compiled.py --size tiny --device cpu --steps 6 --warmup 2 --modes eager default \\
        --flags --torch_compile_backend eager                             # a smoke run (CPU configs)

Modes: `eager` (`--torch_compile false`), `default` (`torch.compile`, inductor's default mode) and `reduce-overhead`
(inductor replaying forward and backward as CUDA graphs). Each run is the script's `main` (data, tokenizer, model,
collator, callbacks and trainer exactly as a user's run), stopped after training: its final evaluation, export and
end-of-run suites are left out here. Per run: compile time (the first optimizer step, from the run's
CompileWatchCallback) and the graphs compiled after warm-up (none expected), the steady-state tokens/s over the steps
after `--warmup` (the device synchronised at both ends only, so the host may run ahead as in a real run), MFU by the
formulas of `train_mlm.py` and `train_diffusion.py`, peak memory, and the logged training losses. The losses of a
compiled mode are compared with eager's at every logging step: the masks and the diffusion noise are the same draws
in every mode, dropout is not (inductor draws its own random numbers), so the comparison bounds the difference
rather than expecting bitwise equality. Results go to `benchmarks/results/train_compiled_<device>.json`.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import transformers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from benchmarks import train_diffusion, train_mlm  # noqa: E402
from trainers import compiled, finishing, run_ltg_bert, run_mdlm  # noqa: E402
from trainers.diffusion_trainer import MaskedDiffusionTrainer  # noqa: E402
from trainers.mlm_trainer import MaskedLMTrainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
MODELS = {  # script, config (with --size), trainer class, FLOPs per token of a trained model
    "ltg_bert": (run_ltg_bert, "ltg_bert_{size}.yaml", MaskedLMTrainer,
                 # the head runs on every position on accelerators (MaskedLMTrainer)
                 lambda model, seq_len, device: train_mlm.flops_per_token(model, seq_len,
                                                                          0.15 if device == "cpu" else 1.0)),
    "mdlm": (run_mdlm, "mdlm_{size}.yaml", MaskedDiffusionTrainer,
             lambda model, seq_len, device: train_diffusion.flops_per_token(model, seq_len)),
}
MODES = {"eager": ["--torch_compile", "false"],
         "default": ["--torch_compile", "true", "--torch_compile_mode", "default"],
         "reduce-overhead": ["--torch_compile", "true", "--torch_compile_mode", "reduce-overhead"]}


class StepClock(TrainerCallback):
    """Wall-clock time from the end of step `warmup` to the end of training, the device synchronised at both ends."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds, self.steps = warmup, None, None, 0

    def _sync(self, args):
        if args.device.type == "cuda":
            torch.cuda.synchronize(args.device)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync(args)
            self.start = time.perf_counter()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._sync(args)
        self.seconds = time.perf_counter() - self.start
        self.steps = state.global_step - self.warmup
        self.state, self.model = state, getattr(model, "_orig_mod", model)


def run(name: str, mode: str, args, work: Path, tokenizer: Path | None) -> dict:
    script, config, trainer_class, flops = MODELS[name]
    config = config.format(size=args.size)
    output_dir = work / f"{name}_{mode}"
    argv = [str(CONFIGS / config), "--output_dir", str(output_dir), "--max_steps", str(args.steps),
            "--max_train_minutes", "30", "--eval_strategy", "no", "--save_strategy", "no",
            "--logging_steps", str(args.logging_steps), "--dataloader_drop_last", "true",
            *MODES[mode], *args.flags]
    if tokenizer is not None:
        argv += ["--tokenizer_name", str(tokenizer)]  # the first run's, trained on the same data
    if args.device == "cpu" and args.size != "tiny":
        argv += ["--use_cpu", "true", "--bf16", "false", "--tf32", "false"]
    clock, watches = StepClock(args.warmup), []
    real_run_callbacks, real_finish, real_evaluate = finishing.run_callbacks, script.finish_run, trainer_class.evaluate

    def run_callbacks(*a, **k):
        callbacks = real_run_callbacks(*a, **k)
        watches.extend(c for c in callbacks if isinstance(c, compiled.CompileWatchCallback))
        return [*callbacks, clock]

    script.run_callbacks, script.finish_run = run_callbacks, lambda *a, **k: None
    trainer_class.evaluate = lambda self, *a, **k: {"eval_loss": float("nan")}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    parsed = script.parse(argv)
    try:
        script.main(*parsed)
    finally:
        script.run_callbacks, script.finish_run, trainer_class.evaluate = real_run_callbacks, real_finish, real_evaluate
    training_args, seq_len = parsed[-1], parsed[1].max_seq_length
    tokens_per_step = training_args.per_device_train_batch_size * seq_len * training_args.gradient_accumulation_steps
    tokens_per_s = clock.steps * tokens_per_step / clock.seconds
    per_token = flops(clock.model, seq_len, args.device)
    watch = watches[0] if watches else None
    result = {"command": f"python trainers/{script.__name__.rsplit('.', 1)[-1]}.py trainers/configs/{config} "
                         + " ".join(argv[1:]),
              "tokens_per_step": tokens_per_step, "timed_steps": clock.steps,
              "seconds_per_step": round(clock.seconds / clock.steps, 5), "tokens_per_s": round(tokens_per_s),
              "flops_per_token": per_token,
              "compile_seconds": round(watch.compile_seconds, 1) if watch else None,
              "graphs_after_warm_up": sum(g for _, g, _ in watch.late_graphs) if watch else None,
              "recompile_reasons": [r for _, _, rs in watch.late_graphs for r in rs][:5] if watch else None,
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda" else None,
              "losses": {entry["step"]: entry["loss"] for entry in clock.state.log_history if "loss" in entry}}
    if args.peak_flops:
        result["mfu"] = round(tokens_per_s * per_token / args.peak_flops, 4)
    torch._dynamo.reset()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result, output_dir / "tokenizer"


def compare_losses(results: dict) -> None:
    """Per compiled mode: the largest difference from eager's logged loss, absolute and relative."""
    eager = results.get("eager")
    for mode, result in results.items():
        if mode == "eager" or eager is None:
            continue
        pairs = [(eager["losses"][step], loss) for step, loss in result["losses"].items() if step in eager["losses"]]
        if pairs:
            result["loss_vs_eager_max_abs"] = round(max(abs(a - b) for a, b in pairs), 4)
            result["loss_vs_eager_max_rel"] = round(max(abs(a - b) / abs(a) for a, b in pairs), 4)
            result["speedup_vs_eager"] = round(result["tokens_per_s"] / eager["tokens_per_s"], 3)
        if "default" in results and mode != "default":
            result["speedup_vs_default"] = round(result["tokens_per_s"] / results["default"]["tokens_per_s"], 3)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--size", choices=["small", "tiny"], default="small", help="the configs: <model>_<size>.yaml")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50, help="steps before the clock starts")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", default="outputs/train_compiled")
    parser.add_argument("--output")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more flags for every run")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    args.peak_flops = next((flops for key, flops in train_mlm.PEAK_BF16_FLOPS.items() if key in name), None)
    output = Path(args.output or Path(__file__).with_name("results") / f"train_compiled_{args.device}.json")
    work = Path(args.work_dir) / time.strftime("%Y%m%d-%H%M%S")  # a fresh folder: runs refuse a used output_dir
    record = {"benchmark": "train_compiled", "device": name, "torch": torch.__version__,
              "transformers": transformers.__version__, "steps": args.steps, "warmup": args.warmup,
              "peak_bf16_flops": args.peak_flops, "runs": {}}
    for model in args.models:
        record["runs"][model] = results = {}
        tokenizer = None
        for mode in args.modes:
            results[mode], trained_tokenizer = run(model, mode, args, work, tokenizer)
            tokenizer = tokenizer or trained_tokenizer
            compare_losses(results)
            shown = {k: results[mode].get(k) for k in ("tokens_per_s", "mfu", "compile_seconds",
                                                        "graphs_after_warm_up", "loss_vs_eager_max_rel")}
            print(model, mode, shown, flush=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
