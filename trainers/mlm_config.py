"""The masked-LM objective's training arguments (`MaskedLMTrainer`, `run_ltg_bert.py`)."""

from dataclasses import dataclass, field
from typing import Optional

from eval_suites.scoring import SCORERS
from trainers.arguments import RunTrainingArguments


@dataclass
class MaskedLMTrainingArguments(RunTrainingArguments):
    """`TrainingArguments` plus the masked-LM knobs (everything else is transformers' own)."""

    mask_strategy: str = field(
        default="span",
        metadata={"help": "'span' (LTG-BERT: whole spans, geometric lengths) or 'token' (BERT: i.i.d. tokens).",
                  "choices": ["span", "token"]},
    )
    mask_probability: float = field(default=0.15, metadata={"help": "Share of real, non-special tokens predicted."})
    blimp_scorer: str = field(default="pll", metadata={"help": "Scorer for the BLiMP evaluation after training."})
    blimp_token_budget: int = field(default=8192, metadata={"help": "Tokens per BLiMP scoring forward pass."})
    init_from: Optional[str] = field(
        default=None, metadata={"help": "Continue pretraining this hubzoo LTG-BERT export/checkpoint folder (loaded "
                                        "strictly, with its tokenizer unless tokenizer_name is given)."}
    )

    def __post_init__(self):
        # Checked here, not at the end of the run; not as argparse choices, which would freeze the scorers registered
        # when this module was imported.
        if self.blimp_scorer not in SCORERS:
            raise ValueError(f"blimp_scorer must be one of {sorted(SCORERS)}, got {self.blimp_scorer!r}")
        super().__post_init__()
