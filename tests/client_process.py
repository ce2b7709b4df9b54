"""Helpers for the client processes of tests/test_peft.py and tests/test_downstream.py (see tests/client_common.py).

Imports only the standard library, torch, safetensors and transformers: a client process must not import hubzoo."""

import json
import logging
import sys
import traceback
import warnings
from contextlib import contextmanager

import torch
import transformers
from safetensors.torch import load_file


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def collected_warnings():
    """The warnings (Python's and transformers' logger's) raised inside the block, as a list of strings."""
    transformers.logging.set_verbosity_warning()
    collector = Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(collector)
    messages = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(collector)
    messages += collector.messages + [f"{w.category.__name__}: {w.message}" for w in caught]


def main_output(outputs) -> torch.Tensor:
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


def load_inputs(path) -> tuple:
    """(model inputs, labels) from the inputs file tests/client_common.py writes."""
    inputs = load_file(path)
    return inputs, inputs.pop("labels")


def outputs_of(model, inputs) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = main_output(model(**inputs)).float()
    model.train(was_training)
    return result


def failure() -> str:
    """The current exception, short enough for a report: its last traceback lines."""
    return "".join(traceback.format_exc().splitlines(keepends=True)[-12:])


def read_spec() -> dict:
    with open(sys.argv[1]) as handle:
        return json.load(handle)


def report(value) -> None:
    print(json.dumps(value))
