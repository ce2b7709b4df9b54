"""transformers' own common model tests on the ltg_bert tiny config (tests/transformers_common)."""
import unittest
from unittest import mock

from transformers.models.auto import modeling_auto

from tests.models.ltg_bert import test_modeling_ltg_bert as declared
from tests.transformers_common.testers import DeclaredModelTest, ModelTesterMixin


class LtgBertCommonTest(DeclaredModelTest, ModelTesterMixin, unittest.TestCase):
    declaration = declared.TestLtgBert
    all_model_classes = declared.TestLtgBert.model_classes
    # upstream runs the init test only on files with a "# Copyright 2023" or later header; ours carry none
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        super().setUp()
        # transformers' tests tell the base model (no loss: left out of the training tests) by the name tables behind
        # its Auto classes. hubzoo registers with the Auto classes, which does not write those tables, so the test
        # records there what the registration says.
        for table, name in ((modeling_auto.MODEL_MAPPING_NAMES, "LtgBertModel"),
                            (modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, "LtgBertForMaskedLM")):
            patcher = mock.patch.dict(table, {"ltg_bert": name})
            patcher.start()
            self.addCleanup(patcher.stop)
