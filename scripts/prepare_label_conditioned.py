"""Write a labelled TSV/CSV/JSONL as label-conditioned text lines, `template.format(label=name) + text`, for training
a generative classifier with a language-model script (e.g. `trainers/run_mdlm.py --train_file ...`); the same template
and label names are then given to `python -m eval_suites classification`, which scores each text after each class's
prompt.

    python scripts/prepare_label_conditioned.py ../shared/data/sst2/train.tsv .gpu_data/sst2_train.txt \
        --text-column sentence --label-column label --labels 0=negative,1=positive --template "{label}: "
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from eval_suites.classification import load_examples, parse_label_spec  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--labels", required=True, help="value=name pairs, e.g. 0=negative,1=positive")
    parser.add_argument("--template", default="{label}: ")
    args = parser.parse_args(argv)
    names = list(parse_label_spec(args.labels).values())  # in class-id order
    texts, labels = load_examples(args.data, args.text_column, args.label_column,
                                  list(parse_label_spec(args.labels)))  # refuses labels outside the set
    lines = [args.template.format(label=names[label]) + " ".join(text.split()) for text, label in zip(texts, labels)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} lines -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
