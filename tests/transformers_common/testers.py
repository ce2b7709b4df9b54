"""One small `ModelTester` per architecture, over the tiny configs its conformance declaration already holds.

transformers' `ModelTesterMixin` asks its `model_tester` for `prepare_config_and_inputs_for_common()` and a few sizes.
`common_test_case(declaration)` builds the `unittest.TestCase` base for an architecture from its declaration class in
`tests/models/<arch>/test_modeling_<arch>.py` (config, inputs, labels), so the two suites test the same models.
"""
from __future__ import annotations

import importlib
from unittest import mock

import torch
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

from tests.transformers_common.upstream import import_upstream

modeling_common = import_upstream("test_modeling_common")
configuration_common = import_upstream("test_configuration_common")
ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
GenerationTesterMixin = modeling_common.GenerationTesterMixin

# transformers' tests tell a base model (no head, no loss: left out of the training and checkpointing tests) and an LM
# head (labels, `shift_labels`) by the name tables behind the Auto classes of transformers' own architectures.
# hubzoo registers through `AutoModel.register`, which leaves those tables alone, so each test lists the
# architecture's classes there for its duration (the `AUTO_CLASSES` of its package, as the exports record them).
AUTO_NAME_TABLES = {
    "AutoModel": modeling_auto.MODEL_MAPPING_NAMES,
    "AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "AutoModelForMaskedLM": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "AutoModelForSequenceClassification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
}


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
        # transformers' testers build their inputs on `torch_device` ("cuda" on a GPU machine), where the tests put
        # the models
        return config, {key: value.to(torch_device) for key, value in inputs.items()}


class DeclaredModelTest:
    """First base of the per-architecture common-test classes (before transformers' mixins, then
    `unittest.TestCase`); subclasses set `declaration` and `all_model_classes`."""

    declaration = None  # the hubzoo conformance declaration class
    # transformers runs its init test only on files dated 2023 or later by their copyright line; ours carry none,
    # and every parameter and buffer of ours must be set by `_init_weights`
    test_can_init_all_missing_weights_before_2023 = True
    config_tester_kwargs = {}

    def setUp(self):
        self.declared = self.declaration()
        config_class = self.declaration.config_class
        package = importlib.import_module(config_class.__module__.rsplit(".", 1)[0])
        for auto_name, model_class in package.AUTO_CLASSES.items():
            if auto_name in AUTO_NAME_TABLES:
                patcher = mock.patch.dict(AUTO_NAME_TABLES[auto_name], {config_class.model_type: model_class.__name__})
                patcher.start()
                self.addCleanup(patcher.stop)
        self.model_tester = DeclaredModelTester(self, self.declared)
        tiny = self.declared.get_config().to_dict()
        sizes = {key: tiny[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")}
        self.config_tester = ConfigTester(self, config_class=self.declaration.config_class,
                                          **{**sizes, **self.config_tester_kwargs})

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        # The declaration's labels fit the model (clean x_0 for a diffusion LM, tokenizer ids for a padded head);
        # a classifier keeps transformers' zeros, which fit whatever num_labels a test sets (test_problem_types).
        if return_labels and not model_class.__name__.endswith("ForSequenceClassification"):
            config = self.model_tester.get_config()
            # drawn on the CPU, where the declaration's generator lives, then put beside the inputs
            on_cpu = {key: value.cpu() if isinstance(value, torch.Tensor) else value
                      for key, value in inputs_dict.items()}
            labels = self.declared.get_labels(model_class, config, on_cpu, torch.Generator().manual_seed(1))
            if labels is not None:
                inputs_dict["labels"] = labels.to(inputs_dict["input_ids"].device)
        return inputs_dict
