"""Stand-in for transformers' `tests/exporters/test_export.py` (not in the sdist): `ExportTesterMixin`.

Our own checks, written for this project: every class of `all_model_classes` traces with `torch.export.export`
(non-strict) and `torch.compile(fullgraph=True)` and gives its eager outputs, and tracing leaves no trace behind: a
later eager forward in the same process still returns real tensors equal to the first ones (a module-level cache that
kept a traced or fake tensor silently corrupts every later call).

`ModelTesterMixin` (upstream) subclasses this mixin, so its flag `test_torch_exportable` is honoured here. The checks
trace the forward pass (`use_cache=False` where the forward takes it); the cache is the generation checks' subject.
The checks run on transformers' `torch_device` (CUDA where there is one). Compilation uses the `aot_eager` backend
(inductor with HUBZOO_COMPILE_BACKEND=inductor): graph capture without graph breaks and fake-tensor tracing (what
fails on host-side value checks and poisons caches) are dynamo's and AOTAutograd's; inductor's C++ code generation
would only add minutes per class on a CPU runner.
"""
from __future__ import annotations

import inspect
import os
import sys

import pytest
import torch

from transformers.testing_utils import torch_device
from transformers.utils import ModelOutput

ATOL, RTOL = 1e-5, 1e-4


def output_tensors(output) -> list:
    """Every tensor of a model output, in order (nested tuples, lists, dicts and ModelOutputs; None left out)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (ModelOutput, dict)):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in output_tensors(item)]
    return []


def is_fake(tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor) or type(tensor) is not torch.Tensor


def clear_module_caches(model_class) -> None:
    """Empty the `functools.lru_cache`s of the modules of `model_class`'s package, so that a trace computes their
    tables itself (an eager call earlier in the process would otherwise have filled them with real tensors, hiding a
    cache that keeps what a trace puts in it)."""
    package = model_class.__module__.rsplit(".", 1)[0]
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)) and callable(getattr(value, "cache_info", None)):
                value.cache_clear()


class ExportTesterMixin:
    # The GPU run sets HUBZOO_COMPILE_BACKEND=inductor: generated kernels are cheap to build there.
    compile_backend = os.environ.get("HUBZOO_COMPILE_BACKEND", "aot_eager")

    def _export_model(self, model_class):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs = self._prepare_for_class(inputs, model_class)
        torch.manual_seed(0)
        model = model_class(config).to(torch_device).eval()  # torch_device: "cuda" on a GPU machine
        inputs = {key: value.to(torch_device) if isinstance(value, torch.Tensor) else value
                  for key, value in inputs.items()}
        if "use_cache" in inspect.signature(model.forward).parameters:
            inputs["use_cache"] = False
        return model, inputs

    def _exported_classes(self):
        if not getattr(self, "test_torch_exportable", True):
            self.skipTest(f"{type(self).__name__} sets test_torch_exportable = False (its reason is at the flag)")
        if not self.all_model_classes:  # a check over no class would pass without checking anything
            self.skipTest(f"{type(self).__name__} declares no model class")
        return tuple(self.all_model_classes)

    def _assert_same_outputs(self, actual, expected, what):
        actual, expected = output_tensors(actual), output_tensors(expected)
        self.assertEqual(len(actual), len(expected), f"{what}: number of output tensors")
        for index, (a, e) in enumerate(zip(actual, expected)):
            torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}, output {index}: {m}")

    @pytest.mark.torch_export_test
    def test_torch_export(self):
        """`torch.export.export(model, kwargs=inputs, strict=False)` runs and the program gives eager's outputs."""
        for model_class in self._exported_classes():
            with self.subTest(model_class.__name__):
                model, inputs = self._export_model(model_class)
                try:
                    with torch.no_grad():
                        eager = model(**inputs)
                        clear_module_caches(model_class)
                        program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                        exported = program.module()(**inputs)
                finally:
                    clear_module_caches(model_class)  # what the trace cached must not reach later tests
                self._assert_same_outputs(exported, eager, "exported program vs eager")

    @pytest.mark.torch_compile_test
    def test_torch_compile_fullgraph(self):
        """`torch.compile(model, fullgraph=True)` captures the forward in one graph and gives eager's outputs."""
        for model_class in self._exported_classes():
            with self.subTest(model_class.__name__):
                torch._dynamo.reset()
                model, inputs = self._export_model(model_class)
                try:
                    with torch.no_grad():
                        eager = model(**inputs)
                        clear_module_caches(model_class)
                        compiled = torch.compile(model, fullgraph=True, backend=self.compile_backend)(**inputs)
                    self._assert_same_outputs(compiled, eager, "compiled vs eager")
                finally:
                    torch._dynamo.reset()
                    clear_module_caches(model_class)

    @pytest.mark.torch_export_test
    def test_eager_after_tracing(self):
        """After an export and a compile in this process, an eager forward still returns real tensors equal to the
        first eager outputs. The traces may fail (the two tests above report that): their side effects are the
        subject here, since a cache is filled during tracing, before any failure."""
        for model_class in self._exported_classes():
            with self.subTest(model_class.__name__):
                torch._dynamo.reset()
                model, inputs = self._export_model(model_class)
                try:
                    with torch.no_grad():
                        before = model(**inputs)
                        self.assertFalse(any(map(is_fake, output_tensors(before))), "fake outputs before tracing")
                        clear_module_caches(model_class)
                        try:
                            torch.export.export(model, args=(), kwargs=inputs, strict=False)
                        except Exception:  # noqa: BLE001 - reported by test_torch_export
                            pass
                        try:
                            torch.compile(model, fullgraph=True, backend=self.compile_backend)(**inputs)
                        except Exception:  # noqa: BLE001 - reported by test_torch_compile_fullgraph
                            pass
                        torch._dynamo.reset()
                        after = model(**inputs)
                finally:
                    clear_module_caches(model_class)  # what the traces cached must not reach later tests
                fakes = [type(tensor).__name__ for tensor in output_tensors(after) if is_fake(tensor)]
                self.assertEqual(fakes, [], "an eager forward after tracing returned traced/fake tensors")
                self._assert_same_outputs(after, before, "eager after tracing vs before")
