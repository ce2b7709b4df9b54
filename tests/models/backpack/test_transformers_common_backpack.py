"""transformers' own common model tests on the backpack tiny config (tests/transformers_common)."""
import unittest

from tests.models.backpack import test_modeling_backpack as declared
from tests.transformers_common.testers import DeclaredModelTest, GenerationTesterMixin, ModelTesterMixin


class BackpackStanfordCommonTest(DeclaredModelTest, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    declaration = declared.TestBackpackStanford
    all_model_classes = declared.TestBackpackStanford.model_classes


class BackpackNanoCommonTest(BackpackStanfordCommonTest):
    declaration = declared.TestBackpackNano
