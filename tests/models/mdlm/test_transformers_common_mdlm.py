"""transformers' own common model tests on the mdlm tiny config (tests/transformers_common)."""
import unittest

from modeling.mdlm import AUTO_CLASSES
from tests.models.diffusion_common import register_base_model_for_common_tests
from tests.models.mdlm import test_modeling_mdlm as declared
from tests.transformers_common.testers import DeclaredModelTest, ModelTesterMixin


class MdlmCommonTest(DeclaredModelTest, ModelTesterMixin, unittest.TestCase):
    declaration = declared.TestMdlm
    all_model_classes = declared.TestMdlm.model_classes
    # transformers skips this check for models it dates before 2023 (from a copyright line we do not have); ours
    # must pass it: every parameter and buffer is set by _init_weights
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        super().setUp()
        register_base_model_for_common_tests(self, AUTO_CLASSES)
