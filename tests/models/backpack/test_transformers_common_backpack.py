"""transformers' own common model tests on the backpack tiny config (tests/transformers_common)."""
import copy
import unittest
from unittest import mock

from tests.models.backpack import test_modeling_backpack as declared
from tests.transformers_common.testers import DeclaredModelTest, GenerationTesterMixin, ModelTesterMixin


class BackpackStanfordCommonTest(DeclaredModelTest, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    declaration = declared.TestBackpackStanford
    all_model_classes = declared.TestBackpackStanford.model_classes
    test_resize_position_embeddings = True  # learned positions, resizable (off by default upstream)

    def _check_cache(self, cache, config, batch, length, what):
        """The generation checks' cache check on the blocks' layers, plus Backpack's one more layer: α's keys
        (B, k, T, d/k) and the sense vectors (B, k, T, d) of every position, since α at a new position weighs the
        senses of all earlier ones, which in `generate` only the cache still has."""
        self.assertEqual(len(cache.layers), config.num_hidden_layers + 1, f"{what}: blocks' layers, then α's")
        blocks = copy.copy(cache)
        blocks.layers = cache.layers[:config.num_hidden_layers]
        super()._check_cache(blocks, config, batch, length, what)
        senses, width = config.num_senses, config.hidden_size
        extra = cache.layers[-1]
        self.assertEqual(tuple(extra.keys.shape), (batch, senses, length, width // senses), f"{what}: α's keys")
        self.assertEqual(tuple(extra.values.shape), (batch, senses, length, width), f"{what}: sense vectors")


    def test_flex_attention_with_grads(self):
        # This test trains (dropout on) and transformers' flex_attention refuses attention dropout with its own clear
        # error; Backpack's one `dropout` is 0.1 in the declaration's config, so the test runs with it at 0.
        with mock.patch.object(self.model_tester, "get_config", lambda: self.declared.get_config(dropout=0.0)):
            super().test_flex_attention_with_grads()


class BackpackNanoCommonTest(BackpackStanfordCommonTest):
    declaration = declared.TestBackpackNano
