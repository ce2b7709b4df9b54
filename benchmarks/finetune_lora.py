"""LoRA against full fine-tuning of one export, side by side in one run: `trainers/run_classification.py` on each
task twice, the same config, data, steps and seed, once training every weight and once with `peft` (LoRA on every
linear layer of the trunk, the new head in full).

    python benchmarks/finetune_lora.py --model outputs/modded_gpt_small/export --tasks sst2 xnli-en xnli-hi
    python benchmarks/finetune_lora.py --model EXPORT --tasks sst2 --device cpu --max-steps 20   # a smoke run

Per run: accuracy, macro-F1, the majority baseline and the collapse flag (the run's own report), trainable and total
parameters, the peak memory the device allocated while training (weights, gradients, optimizer state and
activations), the training time and the real (unpadded) training tokens per second: optimizer steps x batch x the
mean real length of the training rows, over the time `Trainer.train` took. Full fine-tuning uses the config's learning
rate; LoRA `--lora-learning-rate` (LoRA's usual 10x). The tasks are the shipped configs (`classify_sst2.yaml`,
`classify_xnli.yaml`, Hindi through its dev-hi/test-hi files), which read their data from `.gpu_data`. The record is
written after every run to `benchmarks/results/finetune_lora_<device>.json` (or `--output`).
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

from trainers import run_classification  # noqa: E402
from trainers.classification_trainer import ClassificationTrainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "trainers" / "configs"
TASKS = {  # name -> (config, flags)
    "sst2": ("classify_sst2.yaml", []),
    "xnli-en": ("classify_xnli.yaml", []),
    "xnli-hi": ("classify_xnli.yaml", ["--train_file", ".gpu_data/xnli/dev-hi.tsv", "--eval_file",
                                       ".gpu_data/xnli/test-hi.tsv", "--task_name", "xnli-hi"]),
}


class TrainingMeter:
    """Times `ClassificationTrainer.train` and reads the peak memory and parameter counts of the run it trains."""

    def __init__(self):
        self.last = None
        self._train = ClassificationTrainer.train

    def __enter__(self):
        meter = self

        def measured_train(trainer, *args, **kwargs):
            device = trainer.args.device
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            output = meter._train(trainer, *args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            model = trainer.accelerator.unwrap_model(trainer.model)
            lengths = [sum(mask) for mask in trainer.train_dataset["attention_mask"]]
            tokens = trainer.state.global_step * trainer.args.per_device_train_batch_size * sum(lengths) / len(lengths)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            meter.last = {"train_seconds": round(seconds, 2), "train_steps": trainer.state.global_step,
                          "real_tokens_per_s": round(tokens / seconds),
                          "trainable_parameters": trainable,
                          "total_parameters": sum(p.numel() for p in model.parameters()),
                          "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                          if device.type == "cuda" else None}
            return output

        ClassificationTrainer.train = measured_train
        return self

    def __exit__(self, *exc):
        ClassificationTrainer.train = self._train


def run(task: str, mode: str, args, work: Path) -> dict:
    config, flags = TASKS[task]
    output_dir = work / f"{task}_{mode}"
    argv = [str(CONFIGS / config), *flags, "--model_name_or_path", args.model, "--output_dir", str(output_dir),
            "--optimizer", "adamw"]
    if mode == "lora":
        argv += ["--peft", json.dumps({"type": "lora", "r": args.lora_r, "alpha": 2 * args.lora_r,
                                       "dropout": 0.05, "target_modules": "all-linear"}),
                 "--learning_rate", str(args.lora_learning_rate)]
    if args.max_steps:
        argv += ["--max_steps", str(args.max_steps)]
    if args.device == "cpu":
        argv += ["--use_cpu", "true", "--bf16", "false", "--tf32", "false"]
    with TrainingMeter() as meter:
        exit_code = run_classification.main(*run_classification.parse(argv))
    report = json.loads((output_dir / "classification.json").read_text())
    shown = [f"trainers/configs/{config}", *argv[1:]]
    return {"command": "python trainers/run_classification.py " + " ".join(shown),
            "exit_code": exit_code, **meter.last,
            **{key: report[key] for key in ("accuracy", "macro_f1", "majority_baseline_accuracy", "collapsed",
                                            "num_items")}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the export both modes fine-tune")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["sst2"])
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, help="override the configs' training length (smoke runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", default="outputs/finetune_lora")
    parser.add_argument("--output", help="JSON path (default: benchmarks/results/finetune_lora_<device>.json)")
    args = parser.parse_args(argv)
    output = Path(args.output or Path(__file__).with_name("results") / f"finetune_lora_{args.device}.json")
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    record = {"benchmark": "finetune_lora", "device": device_name, "torch": torch.__version__,
              "transformers": transformers.__version__, "model": args.model, "lora_r": args.lora_r,
              "lora_learning_rate": args.lora_learning_rate, "runs": {}}
    for task in args.tasks:
        record["runs"][task] = {}
        for mode in ("full", "lora"):
            record["runs"][task][mode] = result = run(task, mode, args, Path(args.work_dir))
            print(task, mode, {key: result[key] for key in ("accuracy", "trainable_parameters", "peak_memory_gib",
                                                            "real_tokens_per_s", "train_seconds")}, flush=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
