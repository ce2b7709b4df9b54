"""Our stand-ins for transformers' generation and export test mixins (tests/transformers_common), checked against
the outside world: on a tiny built-in transformers model (LlamaForCausalLM) every check passes; on deliberately
broken variants of it, the check made for that defect fails (and the ones it should not touch still pass).
"""
import functools
import unittest

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from tests.transformers_common.export_checks import ExportTesterMixin
from tests.transformers_common.generation_checks import GenerationTesterMixin


class TinyLlamaTester:
    """The sizes and inputs transformers' mixins ask a model tester for, for a two-layer Llama."""

    batch_size, seq_length = 3, 7
    num_hidden_layers, num_attention_heads, hidden_size, vocab_size = 2, 4, 32, 64

    def __init__(self, parent):
        self.parent = parent

    def get_config(self):
        return LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=48,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)

    def prepare_config_and_inputs_for_common(self):
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length),
                                  generator=torch.Generator().manual_seed(0))
        return self.get_config(), {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


class TinyLlamaChecks(GenerationTesterMixin, ExportTesterMixin):
    """What `ModelTesterMixin` would otherwise provide to the two mixins."""

    all_model_classes = (LlamaForCausalLM,)
    has_attentions = True
    test_torch_exportable = True

    def setUp(self):
        self.model_tester = TinyLlamaTester(self)

    @property
    def all_generative_model_classes(self):
        return tuple(cls for cls in self.all_model_classes if cls.can_generate())

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        return dict(inputs_dict)


class TestTinyLlamaPassesEveryCheck(TinyLlamaChecks, unittest.TestCase):
    """A transformers model meets the contract: every generation and export check passes on it."""


# --- broken variants, each with one defect ---------------------------------------------------------------------
class IgnoresCacheLlama(LlamaForCausalLM):
    """Drops the cache it is given: a cached step then sees only its new token."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, *args, **kwargs):
        kwargs.pop("cache", None)
        kwargs.pop("past_key_values", None)
        return super().forward(*args, **kwargs)


class IgnoresPaddingLlama(LlamaForCausalLM):
    """Attends to left padding: the mask is replaced by ones."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None:
            attention_mask = torch.ones_like(attention_mask)
        return super().forward(input_ids, attention_mask, *args, **kwargs)


class DropsEmbeddingHiddenLlama(LlamaForCausalLM):
    """Returns the block outputs as hidden_states but not the embeddings before them (one entry short)."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        if output.hidden_states is not None:
            output.hidden_states = output.hidden_states[1:]
        return output


class MisreadsEmbedsLlama(LlamaForCausalLM):
    """Scales the `inputs_embeds` it is given, so they no longer stand for the same ids."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, *args, inputs_embeds=None, **kwargs):
        return super().forward(*args, inputs_embeds=None if inputs_embeds is None else 2 * inputs_embeds, **kwargs)


@functools.lru_cache(maxsize=None)
def _logit_offsets(size):
    # The known bug: a module-level cache of a tensor table, filled by whichever call comes first (a trace too).
    return torch.linspace(0.0, 1e-2, size)


class CachedTableLlama(LlamaForCausalLM):
    """Adds a cached tensor table to its logits."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        output.logits = output.logits + _logit_offsets(output.logits.shape[-1])
        return output


class HostCheckLlama(LlamaForCausalLM):
    """Checks its ids on the host (`.tolist()`), which a trace cannot do on data-dependent values."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, input_ids=None, *args, **kwargs):
        if max(input_ids.flatten().tolist()) >= self.config.vocab_size:
            raise ValueError("id out of range")
        return super().forward(input_ids, *args, **kwargs)


class StaticShapeErrorLlama(LlamaForCausalLM):
    """Fails with a shape error deep inside the forward when given a static cache (what a refusal must not be)."""

    @functools.wraps(LlamaForCausalLM.forward)
    def forward(self, *args, **kwargs):
        cache = kwargs.get("cache")
        if cache is not None and type(cache).__name__ == "StaticCache":
            raise RuntimeError("The size of tensor a (8) must match the size of tensor b (64) at dimension 2")
        return super().forward(*args, **kwargs)


class RefusesStaticLlama(LlamaForCausalLM):
    """Refuses a static cache up front, with a reason: a correct answer."""

    def generate(self, *args, **kwargs):
        if kwargs.get("cache_implementation") == "static":
            raise NotImplementedError("this model keeps no fixed-size cache: cache_implementation='static' unsupported")
        return super().generate(*args, **kwargs)


def skip_reasons(name, **attributes):
    case = type("ChecksFlags", (TinyLlamaChecks, unittest.TestCase), attributes)
    result = unittest.TestResult()
    case(name).run(result)
    assert not result.failures and not result.errors, result.failures + result.errors
    return [reason for _, reason in result.skipped]


def run_checks(model_class, *names):
    """Run the named checks of our mixins on `model_class`; map each name to its failures (empty: it passed)."""
    case = type(f"Checks{model_class.__name__}", (TinyLlamaChecks, unittest.TestCase),
                {"all_model_classes": (model_class,)})
    outcome = {}
    for name in names:
        result = unittest.TestResult()
        case(name).run(result)
        assert not result.skipped, (name, result.skipped)
        outcome[name] = [text for _, text in result.failures + result.errors]
    return outcome


def assert_fail(outcome, *names):
    for name in names:
        assert outcome[name], f"{name} passed on a model with the defect it is meant to catch"


def assert_pass(outcome, *names):
    for name in names:
        assert not outcome[name], f"{name} failed on a defect it is not about:\n{outcome[name][0]}"


def test_ignoring_the_cache_is_caught():
    outcome = run_checks(IgnoresCacheLlama, "test_greedy_generate_matches_forward_loop",
                         "test_sample_generate_cache_equivalence", "test_beam_search_generate_cache_equivalence",
                         "test_generate_continues_from_cache", "test_cache_format", "test_left_padding_compatibility")
    assert_fail(outcome, "test_greedy_generate_matches_forward_loop", "test_sample_generate_cache_equivalence",
                "test_beam_search_generate_cache_equivalence", "test_generate_continues_from_cache",
                "test_cache_format")
    assert_pass(outcome, "test_left_padding_compatibility")  # full forwards: the cache plays no part


def test_attending_to_padding_is_caught():
    outcome = run_checks(IgnoresPaddingLlama, "test_left_padding_compatibility", "test_left_padding_generate",
                         "test_greedy_generate_matches_forward_loop")
    assert_fail(outcome, "test_left_padding_compatibility", "test_left_padding_generate")
    assert_pass(outcome, "test_greedy_generate_matches_forward_loop")  # no padding there


def test_a_cached_tensor_table_poisoned_by_a_trace_is_caught():
    outcome = run_checks(CachedTableLlama, "test_eager_after_tracing", "test_torch_export")
    assert_fail(outcome, "test_eager_after_tracing")
    assert_pass(outcome, "test_torch_export")  # the program itself is right; the harm is to later eager calls
    assert _logit_offsets.cache_info().currsize == 0, "the check leaves a trace's cache entries behind"


def test_a_host_side_value_check_is_caught():
    outcome = run_checks(HostCheckLlama, "test_torch_export", "test_torch_compile_fullgraph",
                         "test_eager_after_tracing")
    assert_fail(outcome, "test_torch_export", "test_torch_compile_fullgraph")
    assert_pass(outcome, "test_eager_after_tracing")  # nothing cached, eager is unharmed


def test_missing_hidden_state_is_caught():
    outcome = run_checks(DropsEmbeddingHiddenLlama, "test_generate_dict_outputs", "test_cache_format")
    assert_fail(outcome, "test_generate_dict_outputs")
    assert_pass(outcome, "test_cache_format")


def test_misread_inputs_embeds_are_caught():
    outcome = run_checks(MisreadsEmbedsLlama, "test_generate_from_inputs_embeds",
                         "test_greedy_generate_matches_forward_loop")
    assert_fail(outcome, "test_generate_from_inputs_embeds")
    assert_pass(outcome, "test_greedy_generate_matches_forward_loop")  # ids only there


def test_static_cache_shape_error_is_caught_and_a_clear_refusal_accepted():
    assert_fail(run_checks(StaticShapeErrorLlama, "test_static_cache_generate"), "test_static_cache_generate")
    assert_pass(run_checks(RefusesStaticLlama, "test_static_cache_generate"), "test_static_cache_generate")


def test_flags_and_missing_classes_skip_with_a_reason():
    assert "test_torch_exportable = False" in " ".join(skip_reasons("test_torch_export", test_torch_exportable=False))
    # A base model cannot generate: the generation checks say so instead of passing over no class.
    assert "no class that can generate" in " ".join(skip_reasons("test_greedy_generate_matches_forward_loop",
                                                                all_model_classes=(LlamaModel,)))
