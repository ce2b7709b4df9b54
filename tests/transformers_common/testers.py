"""One small `ModelTester` per architecture, over the tiny configs its conformance declaration already holds.

transformers' `ModelTesterMixin` asks its `model_tester` for `prepare_config_and_inputs_for_common()` and a few sizes.
`common_test_case(declaration)` builds the `unittest.TestCase` base for an architecture from its declaration class in
`tests/models/<arch>/test_modeling_<arch>.py` (config, inputs, labels), so the two suites test the same models.
"""
from __future__ import annotations

import torch

from tests.transformers_common.upstream import import_upstream

modeling_common = import_upstream("test_modeling_common")
configuration_common = import_upstream("test_configuration_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
GenerationTesterMixin = modeling_common.GenerationTesterMixin


class DeclaredModelTester:
    """Sizes and inputs for transformers' mixin, taken from a hubzoo declaration (`get_config`, `get_inputs`)."""

    def __init__(self, parent, declaration, batch_size=3, seq_length=8, is_training=True):
        self.parent, self.declaration = parent, declaration
        self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, is_training
        config = self.get_config()
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size

    def get_config(self):
        return self.declaration.get_config()

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        generator = torch.Generator().manual_seed(0)
        inputs = self.declaration.get_inputs(config, batch_size=self.batch_size, seq_len=self.seq_length,
                                             generator=generator)
        return config, inputs


class DeclaredModelTest:
    """First base of the per-architecture common-test classes (before transformers' mixins, then
    `unittest.TestCase`); subclasses set `declaration` and `all_model_classes`."""

    declaration = None  # the hubzoo conformance declaration class
    config_tester_kwargs = {}

    def setUp(self):
        self.declared = self.declaration()
        self.model_tester = DeclaredModelTester(self, self.declared)
        tiny = self.declared.get_config().to_dict()
        sizes = {key: tiny[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}
        self.config_tester = ConfigTester(self, config_class=self.declaration.config_class,
                                          **{**sizes, **self.config_tester_kwargs})

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            config = self.model_tester.get_config()
            labels = self.declared.get_labels(model_class, config, inputs_dict, torch.Generator().manual_seed(1))
            if labels is not None:
                inputs_dict["labels"] = labels.to(inputs_dict["input_ids"].device)
        return inputs_dict
