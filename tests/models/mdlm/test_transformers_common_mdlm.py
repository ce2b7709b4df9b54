"""transformers' own common model tests on the mdlm tiny config (tests/transformers_common)."""
import unittest

from tests.models.mdlm import test_modeling_mdlm as declared
from tests.transformers_common.testers import DeclaredModelTest, ModelTesterMixin


class MdlmCommonTest(DeclaredModelTest, ModelTesterMixin, unittest.TestCase):
    declaration = declared.TestMdlm
    all_model_classes = declared.TestMdlm.model_classes
