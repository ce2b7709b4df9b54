"""Argument dataclasses shared by the `run_<type>.py` scripts, and the "one YAML/JSON file, or flags" parser."""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    config_overrides: dict = field(
        default_factory=dict,
        metadata={"help": "Architecture fields for the model config (e.g. hidden_size); vocab_size and special "
                          "ids always come from the tokenizer."},
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Existing tokenizer (folder or Hub id); default: train one on the data."}
    )
    tokenizer_vocab_size: int = field(default=4096, metadata={"help": "Vocabulary size when training a tokenizer."})
    tokenizer_type: str = field(
        default="wordpiece", metadata={"help": "Tokenizer to train: 'wordpiece' or 'bpe'.", "choices": ["wordpiece", "bpe"]}
    )


@dataclass
class DataArguments:
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Local .txt (one text per line) or .json/.jsonl (field `text_column`). Default: the embedded "
                          "corpus."},
    )
    validation_file: Optional[str] = field(default=None, metadata={"help": "Held-out file (same format)."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset name (needs network)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in json / Hub data."})
    embedded_sentences: int = field(
        default=20000, metadata={"help": "Size of the generated default corpus when no train_file is given."}
    )
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of the training lines held out when no validation_file is given."}
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per training example."})
    packing: bool = field(
        default=True,
        metadata={"help": "Pack the token stream into full blocks (True) or chunk whole sentences (False)."},
    )
    blimp_dir: Optional[str] = field(
        default=None,
        metadata={"help": "BLiMP-format pairs to score after training. Default: the embedded corpus' own pairs."},
    )


def parse_args(argument_classes, argv=None):
    """`script.py config.yaml [--flag value ...]`: YAML/JSON values first, flags override them; or flags only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(argument_classes)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        defaults = yaml.safe_load(Path(argv.pop(0)).read_text()) or {}
        known = {f.name for cls in argument_classes for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"Unknown keys in the config file: {unknown}")
        parser.set_defaults(**defaults)
        # Fields marked required on the command line are satisfied by the file.
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


@dataclass
class MaskedLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the masked-LM knobs (everything else is transformers' own)."""

    mask_strategy: str = field(
        default="span",
        metadata={"help": "'span' (LTG-BERT: whole spans, geometric lengths) or 'token' (BERT: i.i.d. tokens).",
                  "choices": ["span", "token"]},
    )
    mask_probability: float = field(default=0.15, metadata={"help": "Share of real, non-special tokens predicted."})
    export_checkpoints: bool = field(
        default=True, metadata={"help": "Write a verified Hub export into every saved checkpoint (checkpoint-N/export)."}
    )
    blimp_scorer: str = field(default="pll", metadata={"help": "Scorer for the BLiMP evaluation after training."})
    blimp_token_budget: int = field(default=8192, metadata={"help": "Tokens per BLiMP scoring forward pass."})
    max_train_minutes: Optional[float] = field(
        default=None, metadata={"help": "Stop training after this many minutes (wall clock), whatever max_steps says."}
    )
