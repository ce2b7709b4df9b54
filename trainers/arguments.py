"""Argument dataclasses shared by the `run_<type>.py` scripts, and the "one YAML/JSON file, or flags" parser."""

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from transformers import HfArgumentParser, TrainingArguments

from trainers.adapters import check_peft_spec

logger = logging.getLogger(__name__)


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
    train_tokenizer_vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary size of the tokenizer trained on the data (unused with "
                                        "tokenizer_name)."}
    )
    tokenizer_type: str = field(
        default="wordpiece", metadata={"help": "Tokenizer to train: 'wordpiece', 'bpe' or 'byte_level_bpe' (lossless)",
                                       "choices": ["wordpiece", "bpe", "byte_level_bpe"]}
    )
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={"help": "modded_gpt: 'sdpa' (default) or 'flex_attention' (document masks as FlexAttention block "
                          "masks; for compiled training on a GPU). Not saved with the model."},
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


# Old keys refused with their new name, in a config file or as a flag. `tokenizer_vocab_size` is a model config's
# count of real token rows (modded GPT); the size of the tokenizer a run trains is `train_tokenizer_vocab_size`.
RENAMED_KEYS = {"tokenizer_vocab_size": "train_tokenizer_vocab_size"}


def parse_args(argument_classes, argv=None):
    """`script.py config.yaml [--flag value ...]`: YAML/JSON values first, flags override them; or flags only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(argument_classes)
    known = {f.name for cls in argument_classes for f in cls.__dataclass_fields__.values()}
    refuse_renamed_flags(argv, known)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        path = argv.pop(0)
        defaults = yaml.safe_load(Path(path).read_text()) or {}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"Unknown keys in the config file: {unknown}{renamed_hint(unknown)}")
        parser.set_defaults(**defaults)
        for action in parser._actions:
            if action.dest in defaults:
                action.required = False  # fields marked required on the command line are satisfied by the file
                # argparse checks only a flag against its choices: `architecture: gpt3` would train GPT-2
                if action.choices is not None and defaults[action.dest] not in action.choices:
                    raise ValueError(f"{action.dest} must be one of {list(action.choices)}, got "
                                     f"{defaults[action.dest]!r} (in {path})")
    for action in parser._actions:
        if action.type is dict:  # argparse would call dict('{"a": 1}'): take JSON objects instead
            action.type = json_object
    return parser.parse_args_into_dataclasses(args=argv)


def renamed_hint(keys) -> str:
    renamed = [f"{key} is now {RENAMED_KEYS[key]}" for key in keys if key in RENAMED_KEYS]
    return f" ({'; '.join(renamed)})" if renamed else ""


def refuse_renamed_flags(argv, known) -> None:
    """HfArgumentParser's own error for an unknown flag would not say what it became."""
    flags = [arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")]
    renamed = [flag for flag in flags if flag in RENAMED_KEYS and flag not in known]
    if renamed:
        raise ValueError(f"Unknown flags: {['--' + flag for flag in renamed]}{renamed_hint(renamed)}")


def json_object(text: str) -> dict:
    """A dict-valued flag, e.g. `--config_overrides '{"hidden_size": 384}'`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


@dataclass
class RunTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the fields every hubzoo run script has: a verified export in each checkpoint and a
    wall-clock budget (see `trainers.finishing.run_callbacks`)."""

    export_checkpoints: bool = field(
        default=True, metadata={"help": "Write a verified Hub export (of the weights the run exports: the EMA where "
                                        "there is one) into every saved checkpoint (checkpoint-N/export)."}
    )
    max_train_minutes: Optional[float] = field(
        default=None, metadata={"help": "Stop training after this many minutes (wall clock), whatever max_steps says."}
    )
    # Trainer's default (True) replaces a NaN or infinite step loss by the mean of the logged ones, hiding a diverged
    # run, and reads every step's loss on the host (a device sync per step): here a NaN shows in the logged loss.
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Replace non-finite step losses in the logged loss by the running mean "
                                         "(Trainer's default; hubzoo's is False: a NaN loss is logged as NaN)."}
    )
    dataloader_drop_last: bool = field(
        default=False, metadata={"help": "Drop the last incomplete training batch of each epoch (a batch of another "
                                         "shape makes a compiled step recompile). Evaluation keeps every example."}
    )
    peft: dict = field(
        default_factory=dict,
        metadata={"help": "LoRA fine-tuning of the run's base export instead of full fine-tuning, e.g. {type: lora, "
                          "r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear, modules_to_save: [...]} "
                          "(trainers/adapters.py); the run then exports adapter repos. Empty: full fine-tuning."},
    )

    def __post_init__(self):
        if self.peft:
            check_peft_spec(self.peft)  # before any work: a misspelt key would train with a default
        if not self.torch_compile and (self.torch_compile_mode or self.torch_compile_backend):
            # Trainer would switch compilation back on for a mode or backend set (by a GPU config): `--torch_compile
            # false` is the switch that turns a compiled config eager.
            logger.warning("torch_compile is false: torch_compile_mode %r and torch_compile_backend %r are not used",
                           self.torch_compile_mode, self.torch_compile_backend)
            self.torch_compile_mode = self.torch_compile_backend = None
        super().__post_init__()
        check_launch(self)


def check_launch(args) -> None:
    """Refuse, before any work, a launch whose processes would not train the way they were launched: on a machine
    without an accelerator, accelerate (1.16) never turns a CPU process group into FSDP, so an FSDP launch config
    trains as plain DDP (with `use_cpu`) or as separate single processes that all act as the main one and write the
    same outputs (without it)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp_launch = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if launched <= 1 and not fsdp_launch:
        return
    args.device  # sets the distributed state up
    running = args.distributed_state.distributed_type.value if args.distributed_state is not None else "NO"
    if args.world_size != launched:
        raise ValueError(f"{launched} processes were launched, but each trains alone ({running}, world size "
                         f"{args.world_size}): {'FSDP needs an accelerator' if fsdp_launch else 'check the launch'}; "
                         "on a CPU, two gloo ranks need `accelerate launch --multi_gpu` and use_cpu: true")
    if fsdp_launch and running != "FSDP":
        raise ValueError(f"An FSDP launch config, but the {launched} processes would train as {running}: accelerate "
                         "runs FSDP only on accelerators; on a CPU, train with DDP (`accelerate launch --multi_gpu`)")


@dataclass
class MuonTrainingArguments(RunTrainingArguments):
    """`TrainingArguments` plus the optimizer choice (AdamW, or Muon for the hidden matrices with AdamW for the rest),
    the trapezoid schedule's cooldown, checkpoint exports and a wall-clock budget."""

    optimizer: str = field(default="adamw", metadata={"help": "'adamw', or 'muon' (Muon on the blocks' 2-D weights, "
                                                             "AdamW at learning_rate on the rest).",
                                                     "choices": ["adamw", "muon"]})
    muon_learning_rate: float = field(default=0.05, metadata={"help": "Muon's learning rate (the speedrun's 0.05)."})
    muon_momentum: float = field(default=0.95, metadata={"help": "Muon's momentum (Nesterov)."})
    muon_weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay of the Muon weights."})
    cooldown_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "With lr_scheduler_type=warmup_stable_decay (the trapezoid): the share of max_steps spent "
                          "decaying linearly at the end (the speedrun: 0.45); sets lr_scheduler_kwargs."},
    )

    def __post_init__(self):
        if self.peft and self.optimizer == "muon":
            raise ValueError("peft trains LoRA matrices (and modules_to_save) with AdamW: set optimizer: adamw "
                             "(Muon orthogonalises the blocks' full weight matrices, which LoRA freezes)")
        if self.cooldown_fraction is not None:
            if self.lr_scheduler_type != "warmup_stable_decay":
                raise ValueError("cooldown_fraction belongs to lr_scheduler_type=warmup_stable_decay")
            if not 0 < self.cooldown_fraction <= 1 or self.max_steps <= 0:
                raise ValueError("cooldown_fraction needs 0 < fraction <= 1 and max_steps > 0")
            given = self.lr_scheduler_kwargs or {}
            given = json.loads(given) if isinstance(given, str) else given
            self.lr_scheduler_kwargs = {"decay_type": "linear",
                                        "num_decay_steps": max(1, int(self.cooldown_fraction * self.max_steps)),
                                        **given}
        super().__post_init__()
