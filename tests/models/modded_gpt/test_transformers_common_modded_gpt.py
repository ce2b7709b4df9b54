"""transformers' own common model tests on the modded_gpt tiny config (tests/transformers_common)."""
import unittest
from unittest import mock

import torch

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from tests.models.modded_gpt import test_modeling_modded_gpt as declared
from tests.transformers_common.testers import DeclaredModelTest, GenerationTesterMixin, ModelTesterMixin

INPUTS_EMBEDS_REASON = ("inputs_embeds alone cannot drive the model: the value embeddings and the document mask are "
                        "looked up from the token ids (a tensor is refused with that reason; None is accepted)")


class TwoBlockModdedGpt(declared.TestModdedGpt):
    """The declaration's tiny model at the 2 blocks transformers' tests allow (`test_num_layers_is_small`), with the
    small track's irregularities kept: block 1 has no attention (the record's block 7), so its cache layer stays empty
    and its attention entry is None; block 0 has the value embedding and the U-net skip 0 -> 1."""

    def get_config(self, **overrides):
        return super().get_config(**{"num_hidden_layers": 2, "layers_without_attention": [1],
                                     "value_embedding_layers": [0, None], **overrides})


class ModdedGptCommonTest(DeclaredModelTest, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    declaration = TwoBlockModdedGpt
    all_model_classes = declared.TestModdedGpt.model_classes
    # The default tokenizer fields (GPT-2's 50257 ids, EOT 50256) and head width (128) do not fit the tester's
    # 128-row, 32-wide, 2-head model.
    config_tester_kwargs = {"tokenizer_vocab_size": declared.TINY["tokenizer_vocab_size"],
                            "eot_token_id": declared.TINY["eot_token_id"], "head_dim": declared.TINY["head_dim"]}

    def setUp(self):
        super().setUp()
        # transformers' tests tell a base model (no loss) and a causal LM head (shifted labels) by their names in
        # the auto mappings, which list only in-library models: list ours for the test, as registration does for
        # the Auto classes.
        for mapping, name in ((MODEL_MAPPING_NAMES, "ModdedGptModel"),
                              (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "ModdedGptForCausalLM"),
                              (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "ModdedGptForSequenceClassification")):
            patcher = mock.patch.dict(mapping, {"modded_gpt": name})
            patcher.start()
            self.addCleanup(patcher.stop)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        if model_class is declared.ModdedGptForSequenceClassification:
            # transformers' own class labels (zeros) fit any num_labels, which test_problem_types changes; the
            # declaration's are drawn for the tester's 3 labels.
            return ModelTesterMixin._prepare_for_class(self, inputs_dict, model_class, return_labels=return_labels)
        return super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)

    def _logits_scored_by_loss(self, model, logits):
        # Targets are token ids of the tokenizer: the padding rows of the head are in the softmax but refused as labels.
        return logits[..., :model.config.tokenizer_vocab_size]

    def test_inputs_embeds(self):
        self.skipTest(INPUTS_EMBEDS_REASON)

    def test_inputs_embeds_matches_input_ids(self):
        self.skipTest(INPUTS_EMBEDS_REASON)

    def test_generate_from_inputs_embeds(self):
        self.skipTest(INPUTS_EMBEDS_REASON + "; generate refuses it with the same reason")

    def test_greedy_generate_matches_forward_loop(self):
        """Greedy decoding is the argmax of the last logits over the tokenizer's ids, one full forward per token,
        with and without cache: `generate` never picks the head's padding rows (their logits stay in the forward's
        output, as the original's loss takes them), so the hand loop leaves them out too."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        model = declared.ModdedGptForCausalLM(config).eval()
        model.generation_config.eos_token_id = None  # every call makes exactly 3 tokens
        ids, mask = inputs["input_ids"][:2], inputs["attention_mask"][:2]
        expected, expected_mask = ids, mask
        with torch.no_grad():
            for _ in range(3):
                logits = model(expected, attention_mask=expected_mask, use_cache=False).logits
                expected = torch.cat([expected, logits[:, -1, :config.tokenizer_vocab_size].argmax(-1, True)], 1)
                expected_mask = torch.cat([expected_mask, torch.ones_like(mask[:, :1])], dim=1)
        for use_cache in (False, True):
            generated = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                                       use_cache=use_cache)
            self.assertTrue(torch.equal(generated, expected), f"use_cache={use_cache}: {generated} != {expected}")
