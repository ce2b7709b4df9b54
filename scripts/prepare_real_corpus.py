"""Build the real-data corpus for the GPU LTG-BERT run from ../shared/data (Brown, WikiText-2, Tiny Shakespeare).

    python scripts/prepare_real_corpus.py ../shared .gpu_data

Writes <out>/train.txt and <out>/valid.txt (one paragraph or sentence per line, light detokenization of the
pre-tokenized corpora) and copies the BLiMP files to <out>/blimp. Split: WikiText-2 test is the validation set;
Brown, WikiText-2 valid and Tiny Shakespeare (its last 5% held out as validation too) are the training set.
"""

import re
import shutil
import sys
from pathlib import Path

DETOKENIZE = [
    (re.compile(r"``|''"), '"'), (re.compile(r" @(.)@ "), r"\1"), (re.compile(r" ([.,;:!?%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$]) "), r"\1"), (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
    (re.compile(r"\s+"), " "),
]


def clean(line: str) -> str:
    for pattern, replacement in DETOKENIZE:
        line = pattern.sub(replacement, line)
    return line.strip()


def wikitext_lines(path: Path):
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("="):  # drop blank lines and section headings
            yield clean(line)


def shakespeare_lines(path: Path):
    # Speeches are blank-line separated blocks; join each block into one line without the speaker tag.
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) > 1:
            yield clean(" ".join(lines[1:]))


def main(shared: Path, out: Path) -> None:
    data = shared / "data"
    out.mkdir(parents=True, exist_ok=True)
    brown = [clean(line) for line in (data / "brown" / "brown.txt").read_text(encoding="utf-8").splitlines()]
    shakespeare = list(shakespeare_lines(data / "tiny_shakespeare" / "input.txt"))
    cut = int(len(shakespeare) * 0.95)
    train = [l for l in brown if l] + list(wikitext_lines(data / "wikitext2" / "valid.txt")) + shakespeare[:cut]
    valid = list(wikitext_lines(data / "wikitext2" / "test.txt")) + shakespeare[cut:]
    (out / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (out / "valid.txt").write_text("\n".join(valid) + "\n", encoding="utf-8")
    shutil.copytree(data / "blimp", out / "blimp", dirs_exist_ok=True)
    words = sum(len(line.split()) for line in train)
    print(f"train: {len(train):,} lines, {words:,} words; valid: {len(valid):,} lines -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
