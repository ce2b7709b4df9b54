"""Argument dataclasses shared by the `run_<type>.py` scripts, and the "one YAML/JSON file, or flags" parser."""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser


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


@dataclass
class DataArguments:
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Text file, one sentence or paragraph per line. Default: the embedded corpus."}
    )
    validation_file: Optional[str] = field(default=None, metadata={"help": "Held-out text file (same format)."})
    embedded_sentences: int = field(
        default=20000, metadata={"help": "Size of the generated default corpus when no train_file is given."}
    )
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of the training lines held out when no validation_file is given."}
    )
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per packed training sequence."})


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
