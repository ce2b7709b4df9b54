"""Stand-in for transformers' `tests/generation/test_utils.py` (not in the sdist): `GenerationTesterMixin`.

Our own checks of the `generate` contract a transformers causal LM meets, written for this project (transformers'
mixin was read to learn what it checks, not copied). Used together with `ModelTesterMixin` and `unittest.TestCase`:
the classes under test are `self.all_generative_model_classes`, the inputs come from
`self.model_tester.prepare_config_and_inputs_for_common()` (ids and mask only), and every model is tiny and random.

Each check compares `generate` with something independent of the cache machinery it exercises: a hand loop of full
forwards, the same call without cache, a single longer call, the unpadded row. EOS is switched off on every model so
that each call makes exactly `max_new_tokens` tokens and the comparisons line up.
"""
from __future__ import annotations

import inspect

import torch

from transformers.cache_utils import Cache

ATOL, RTOL = 1e-5, 1e-4


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def cache_of(output):
    """The cache of a forward or `generate` output (`cache` from transformers 5.24, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def cache_kwarg() -> str:
    """The name `generate` takes a cache under (5.24 renamed `past_key_values` to `cache`, the old one warns)."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def positions_from_mask(attention_mask):
    """What `generate` passes as `position_ids` for a padded batch: the count of real tokens before each one."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


class GenerationTesterMixin:
    max_new_tokens = 3

    # -- helpers -------------------------------------------------------------------------------------------------
    def _generative_classes(self):
        classes = tuple(self.all_generative_model_classes)
        if not classes:  # a check over no class would pass without checking anything
            self.skipTest(f"{type(self).__name__} has no class that can generate")
        return classes

    def _generation_model(self, model_class, attn_implementation=None, batch_size=2):
        """A seeded tiny model in eval mode with EOS off, and ids-only inputs (`input_ids`, `attention_mask`)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        input_ids = inputs["input_ids"][:batch_size]
        attention_mask = inputs.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask[:batch_size]
        torch.manual_seed(0)
        if attn_implementation is None:
            model = model_class(config)
        else:
            model = model_class._from_config(config, attn_implementation=attn_implementation)
        model.to(input_ids.device).eval()  # transformers' torch_device, where the tester put the inputs
        generation_config = model.generation_config
        # Without EOS every call makes exactly max_new_tokens tokens; `generate` fills unset values from here.
        generation_config.eos_token_id = None
        generation_config.forced_eos_token_id = None
        if generation_config.pad_token_id is None:
            generation_config.pad_token_id = getattr(config, "pad_token_id", None) or 0
        return model, {"input_ids": input_ids, "attention_mask": attention_mask}

    def _generate(self, model, inputs, max_new_tokens=None, **kwargs):
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("num_beams", 1)
        return model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, **kwargs)

    def _sequences(self, output):
        return output if isinstance(output, torch.Tensor) else output.sequences

    def _assert_same_tokens(self, first, second, what):
        first, second = self._sequences(first), self._sequences(second)
        self.assertEqual(first.shape, second.shape, f"{what}: shapes differ")
        self.assertTrue(torch.equal(first, second), f"{what}:\n{first.tolist()}\n!=\n{second.tolist()}")

    def _assert_close(self, actual, expected, what):
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")

    def _forward_kwargs(self, model):
        return {"use_cache": False} if _accepts(model, "use_cache") else {}

    # -- decoding modes ------------------------------------------------------------------------------------------
    def _logits_generate_chooses_from(self, model, logits):
        """The logits over the tokens `generate` may pick; a model whose head has rows no token uses (padding rows
        its own logits processor shuts) narrows this."""
        return logits

    def test_greedy_generate_matches_forward_loop(self):
        """Greedy decoding is argmax of the last logits, one full forward per token; the cache must not change it."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                ids, mask = inputs["input_ids"], inputs["attention_mask"]
                with torch.no_grad():
                    for _ in range(self.max_new_tokens):
                        logits = model(input_ids=ids, attention_mask=mask, **self._forward_kwargs(model)).logits
                        next_logits = self._logits_generate_chooses_from(model, logits[:, -1])
                        ids = torch.cat([ids, next_logits.argmax(-1, keepdim=True)], dim=1)
                        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                uncached = self._generate(model, inputs, use_cache=False)
                cached = self._generate(model, inputs, use_cache=True)
                self._assert_same_tokens(uncached, ids, "greedy without cache vs the hand loop")
                self._assert_same_tokens(cached, ids, "greedy with cache vs the hand loop")

    def test_sample_generate_cache_equivalence(self):
        """Seeded multinomial sampling draws the same tokens with and without cache."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                outputs = []
                for use_cache in (False, True):
                    torch.manual_seed(1234)
                    outputs.append(self._generate(model, inputs, do_sample=True, use_cache=use_cache))
                self.assertEqual(outputs[0].shape[1], inputs["input_ids"].shape[1] + self.max_new_tokens)
                self._assert_same_tokens(outputs[0], outputs[1], "seeded sampling without vs with cache")

    def test_beam_search_generate_cache_equivalence(self):
        """Beam search (the cache is reordered between beams) finds the same sequences as without cache."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                uncached = self._generate(model, inputs, num_beams=2, use_cache=False)
                cached = self._generate(model, inputs, num_beams=2, use_cache=True)
                self.assertEqual(uncached.shape, (inputs["input_ids"].shape[0],
                                                  inputs["input_ids"].shape[1] + self.max_new_tokens))
                self._assert_same_tokens(uncached, cached, "beam search without vs with cache")

    # -- return_dict_in_generate ---------------------------------------------------------------------------------
    def test_generate_dict_outputs(self):
        """scores, logits, hidden_states and attentions: one entry per new token, shaped as the config says; the
        first step's logits are those of a plain forward over the prompt."""
        for model_class in self._generative_classes():
            for use_cache in (False, True):
                with self.subTest(model_class.__name__, use_cache=use_cache):
                    self._check_dict_outputs(model_class, use_cache)

    def _check_dict_outputs(self, model_class, use_cache):
        attentions = bool(getattr(self, "has_attentions", True))
        model, inputs = self._generation_model(model_class, attn_implementation="eager" if attentions else None)
        config = model.config
        batch, prompt = inputs["input_ids"].shape
        steps = self.max_new_tokens
        output = self._generate(model, inputs, use_cache=use_cache, return_dict_in_generate=True,
                                output_scores=True, output_logits=True, output_hidden_states=True,
                                output_attentions=attentions)
        self.assertEqual(output.sequences.shape, (batch, prompt + steps))
        with torch.no_grad():
            reference = model(**inputs, **self._forward_kwargs(model)).logits[:, -1]
        for name in ("scores", "logits"):
            entries = getattr(output, name)
            self.assertIsNotNone(entries, f"output_{name}=True returned no {name}")
            self.assertEqual(len(entries), steps, f"one {name} entry per new token")
            for entry in entries:
                self.assertEqual(tuple(entry.shape), (batch, reference.shape[-1]), f"{name} shape")
        self._assert_close(output.logits[0], reference, "first-step logits vs a forward over the prompt")

        layers = getattr(self.model_tester, "expected_num_hidden_layers", config.num_hidden_layers + 1)
        self.assertEqual(len(output.hidden_states), steps, "one hidden_states entry per new token")
        for step, per_layer in enumerate(output.hidden_states):
            query = (prompt if step == 0 else 1) if use_cache else prompt + step
            self.assertEqual(len(per_layer), layers, f"hidden_states at step {step}: one per layer plus embeddings")
            for hidden in per_layer:
                self.assertEqual(tuple(hidden.shape), (batch, query, config.hidden_size), f"hidden at step {step}")

        if not attentions:
            self.assertFalse(output.attentions, "a model without attentions returned some")
            return
        self.assertEqual(len(output.attentions), steps, "one attentions entry per new token")
        for step, per_layer in enumerate(output.attentions):
            query = (prompt if step == 0 else 1) if use_cache else prompt + step
            self.assertEqual(len(per_layer), config.num_hidden_layers, f"attentions at step {step}: one per layer")
            present = [probs for probs in per_layer if probs is not None]
            # A layer without attention (e.g. modded GPT's block 7) holds None; every other one the probabilities.
            self.assertTrue(present, f"no layer returned attentions at step {step}")
            for probs in present:
                self.assertEqual(tuple(probs.shape), (batch, config.num_attention_heads, query, prompt + step),
                                 f"attention probabilities at step {step}")
                self._assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), "attention rows sum to one")

    # -- cache ---------------------------------------------------------------------------------------------------
    def _check_cache(self, cache, config, batch, length, what):
        self.assertIsInstance(cache, Cache, f"{what}: the cache is a transformers Cache")
        self.assertEqual(len(cache.layers), config.num_hidden_layers, f"{what}: layer i of the cache is block i's")
        self.assertEqual(cache.get_seq_length(), length, f"{what}: cached length")
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        filled = 0
        for index, layer in enumerate(cache.layers):
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or keys.numel() == 0:
                continue  # a layer without attention keeps its cache layer empty
            filled += 1
            for name, tensor in (("keys", keys), ("values", values)):
                self.assertEqual(tuple(tensor.shape), (batch, heads, length, head_dim), f"{what}: layer {index} {name}")
        self.assertGreater(filled, 0, f"{what}: no cache layer holds anything")

    def test_cache_format(self):
        """`forward` and `generate` return a transformers Cache with one layer per block, sized by the config."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                batch, prompt = inputs["input_ids"].shape
                with torch.no_grad():
                    forward = model(**inputs, use_cache=True)
                self._check_cache(cache_of(forward), model.config, batch, prompt, "forward")
                output = self._generate(model, inputs, use_cache=True, return_dict_in_generate=True)
                # The last new token has not been through the model yet, so it is not cached.
                self._check_cache(cache_of(output), model.config, batch, prompt + self.max_new_tokens - 1,
                                  "generate")

    def test_generate_continues_from_cache(self):
        """Two greedy calls, the second continuing from the first one's cache, equal one call twice as long."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                first = self._generate(model, inputs, max_new_tokens=2, use_cache=True, return_dict_in_generate=True)
                follow = {"input_ids": first.sequences, "attention_mask": torch.ones_like(first.sequences),
                          cache_kwarg(): cache_of(first)}
                second = self._generate(model, follow, max_new_tokens=2, use_cache=True)
                whole = self._generate(model, inputs, max_new_tokens=4, use_cache=True)
                self._assert_same_tokens(second, whole, "continued from the cache vs one long call")

    # -- padding, embeddings, static cache ------------------------------------------------------------------------
    def _left_pad(self, model, inputs, pad):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pad_id = model.generation_config.pad_token_id
        pad_ids = torch.full((ids.shape[0], pad), pad_id, dtype=ids.dtype, device=ids.device)
        return {"input_ids": torch.cat([pad_ids, ids], 1),
                "attention_mask": torch.cat([torch.zeros_like(pad_ids), mask], 1)}

    def test_left_padding_compatibility(self):
        """The next-token logits of a left-padded row equal those of the row unpadded (positions as `generate`
        passes them when `forward` takes `position_ids`)."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                padded = self._left_pad(model, inputs, pad=3)
                if _accepts(model, "position_ids"):
                    inputs = {**inputs, "position_ids": positions_from_mask(inputs["attention_mask"])}
                    padded = {**padded, "position_ids": positions_from_mask(padded["attention_mask"])}
                with torch.no_grad():
                    plain = model(**inputs, **self._forward_kwargs(model)).logits[:, -1]
                    shifted = model(**padded, **self._forward_kwargs(model)).logits[:, -1]
                self._assert_close(shifted, plain, "last logits, left-padded vs unpadded")

    def test_left_padding_generate(self):
        """Greedy generation of a batch with a left-padded short row gives each row what it gets alone."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                ids = inputs["input_ids"]
                short = {"input_ids": ids[:1, 2:], "attention_mask": torch.ones_like(ids[:1, 2:])}
                full = {"input_ids": ids[1:], "attention_mask": torch.ones_like(ids[1:])}
                padded = self._left_pad(model, short, pad=2)
                batch = {key: torch.cat([padded[key], full[key]]) for key in padded}
                together = self._generate(model, batch, use_cache=True, return_dict_in_generate=True,
                                          output_logits=True)
                for row, alone_inputs in enumerate((short, full)):
                    alone = self._generate(model, alone_inputs, use_cache=True, return_dict_in_generate=True,
                                           output_logits=True)
                    new = together.sequences[row:row + 1, ids.shape[1]:]
                    self._assert_same_tokens(new, alone.sequences[:, alone_inputs["input_ids"].shape[1]:],
                                             f"row {row} in the padded batch vs alone")
                    for step, logits in enumerate(alone.logits):
                        self._assert_close(together.logits[step][row:row + 1], logits, f"row {row} step {step}")

    def test_generate_from_inputs_embeds(self):
        """Generating from `inputs_embeds` (the input embeddings of the ids) gives the tokens the ids give."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                if not _accepts(model, "inputs_embeds"):
                    self.skipTest(f"{model_class.__name__}.forward takes no inputs_embeds")
                with torch.no_grad():
                    embeds = model.get_input_embeddings()(inputs["input_ids"])
                from_ids = self._generate(model, inputs, use_cache=True, return_dict_in_generate=True,
                                          output_logits=True)
                from_embeds = self._generate(model, {"inputs_embeds": embeds,
                                                     "attention_mask": inputs["attention_mask"]},
                                             use_cache=True, return_dict_in_generate=True, output_logits=True)
                # Decoder-only generation from embeddings returns only the new tokens.
                self._assert_same_tokens(from_embeds.sequences,
                                         from_ids.sequences[:, inputs["input_ids"].shape[1]:], "embeds vs ids")
                for step, (a, b) in enumerate(zip(from_embeds.logits, from_ids.logits)):
                    self._assert_close(a, b, f"logits at step {step}, embeds vs ids")

    def test_static_cache_generate(self):
        """`cache_implementation="static"` either gives the dynamic cache's tokens or is refused with a clear
        ValueError/NotImplementedError that names it, before the model runs."""
        for model_class in self._generative_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._generation_model(model_class)
                dynamic = self._generate(model, inputs, use_cache=True)
                calls = []
                hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
                try:
                    static = self._generate(model, inputs, use_cache=True, cache_implementation="static")
                except (ValueError, NotImplementedError) as error:
                    self.assertIn("static", str(error).lower(), f"the refusal does not say why: {error}")
                    self.assertEqual(calls, [], f"refused only after running the model: {error}")
                    continue
                finally:
                    hook.remove()
                self._assert_same_tokens(static, dynamic, "static vs dynamic cache")
