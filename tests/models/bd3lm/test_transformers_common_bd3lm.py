"""transformers' own common model tests on the bd3lm tiny config (tests/transformers_common)."""
import unittest

from tests.models.bd3lm import test_modeling_bd3lm as declared
from tests.transformers_common.testers import DeclaredModelTest, ModelTesterMixin


class Bd3lmCommonTest(DeclaredModelTest, ModelTesterMixin, unittest.TestCase):
    declaration = declared.TestBd3lm
    all_model_classes = declared.TestBd3lm.model_classes
