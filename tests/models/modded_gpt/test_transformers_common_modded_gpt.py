"""transformers' own common model tests on the modded_gpt tiny config (tests/transformers_common)."""
import unittest

from tests.models.modded_gpt import test_modeling_modded_gpt as declared
from tests.transformers_common.testers import DeclaredModelTest, GenerationTesterMixin, ModelTesterMixin


class ModdedGptCommonTest(DeclaredModelTest, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    declaration = declared.TestModdedGpt
    all_model_classes = declared.TestModdedGpt.model_classes
