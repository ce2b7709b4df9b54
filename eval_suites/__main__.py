"""python -m eval_suites blimp --model <export folder or Hub id> --data <dir of BLiMP-format jsonl[.gz]> ...

Writes `blimp.json` (all numbers) and `blimp.md` (tables) to --output, prints the headline, and with --write-card adds
the result to the model card of a local export.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from eval_suites.blimp import evaluate_blimp, load_pairs, markdown_report
from eval_suites.scoring import SCORERS


def load_model(name: str, scorer: str):
    auto_class = AutoModelForCausalLM if scorer == "causal" else AutoModelForMaskedLM
    model = auto_class.from_pretrained(name, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(name, trust_remote_code=True)


def run_blimp(args) -> int:
    model, tokenizer = load_model(args.model, args.scorer)
    if args.device:
        model.to(args.device)
    pairs = load_pairs(args.data, limit_per_paradigm=args.limit_per_paradigm)
    result = evaluate_blimp(model, tokenizer, pairs, scorer=args.scorer, token_budget=args.token_budget)
    result.update(model=args.model, data=str(args.data))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "blimp.json").write_text(json.dumps(result, indent=2) + "\n")
    report = markdown_report(result, title=f"BLiMP ({Path(args.data).name})")
    (output / "blimp.md").write_text(report)
    print(f"BLiMP accuracy {result['accuracy']:.4f} over {result['num_paradigms']} paradigms, "
          f"{result['num_pairs']} pairs, UNK rate {result['unk_rate']:.4f} -> {output}/blimp.json")
    if args.write_card:
        from hub_exports.exporting import Metric, add_results_to_card

        add_results_to_card(args.model, [Metric("text-scoring", Path(args.data).name, "blimp", "accuracy",
                                                round(result["accuracy"], 4), metric_name=f"BLiMP ({args.scorer})")],
                            report)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites", description=__doc__)
    commands = parser.add_subparsers(dest="suite", required=True)
    blimp = commands.add_parser("blimp", help="minimal-pair accuracy from sentence log-likelihoods")
    blimp.add_argument("--model", required=True, help="exported folder or Hub repo id")
    blimp.add_argument("--data", required=True, help="directory of BLiMP-format *.jsonl / *.jsonl.gz files")
    blimp.add_argument("--scorer", default="pll", choices=sorted(SCORERS))
    blimp.add_argument("--token-budget", type=int, default=8192, help="tokens per forward pass (masked copies)")
    blimp.add_argument("--limit-per-paradigm", type=int, help="score only the first N pairs of each file")
    blimp.add_argument("--device", help="e.g. cuda; default: where the model loads (CPU)")
    blimp.add_argument("--output", default="blimp_results")
    blimp.add_argument("--write-card", action="store_true", help="add the result to the export's model card")
    blimp.set_defaults(run=run_blimp)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
