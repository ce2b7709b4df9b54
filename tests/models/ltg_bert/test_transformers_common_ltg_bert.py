"""transformers' own common model tests on the ltg_bert tiny config (tests/transformers_common)."""
import unittest

from tests.models.ltg_bert import test_modeling_ltg_bert as declared
from tests.transformers_common.testers import DeclaredModelTest, ModelTesterMixin


class LtgBertCommonTest(DeclaredModelTest, ModelTesterMixin, unittest.TestCase):
    declaration = declared.TestLtgBert
    all_model_classes = declared.TestLtgBert.model_classes
