"""The Trainer of sequence-classification fine-tuning (`run_classification.py`)."""

from transformers import Trainer

from trainers.checkpoints import CompleteCheckpointsMixin
from trainers.compiled import CompiledTrainingMixin
from trainers.muon import MuonOptimizerMixin


class ClassificationTrainer(CompleteCheckpointsMixin, CompiledTrainingMixin, MuonOptimizerMixin, Trainer):
    """Trainer with the Muon option; the loss is the model's (a mean over the micro-batch's examples, which is the
    step mean under gradient accumulation because every micro-batch but the last has the same size)."""
