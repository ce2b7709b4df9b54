"""Behaviour that differs by architecture is asked of the object the architecture registers (`modeling.
DIFFUSION_POLICIES`, `modeling.ARCHITECTURES`), never decided by comparing `model_type` strings above `modeling/`."""

import ast
from pathlib import Path

import pytest
import torch

import modeling
from modeling import DIFFUSION_POLICIES, diffusion_policy, require_diffusion_policy

ROOT = Path(__file__).resolve().parents[1]
LAYERS_ABOVE_MODELING = ("hub_exports", "eval_suites", "trainers", "benchmarks", "scripts")
REGISTRIES = {"ARCHITECTURES", "DIFFUSION_POLICIES"}  # `model_type in REGISTRY` is a lookup, not a switch
def _reads_model_type(node) -> bool:
    """`x.model_type`, `model_type`, `getattr(x, "model_type"...)` or `x.get("model_type"...)`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "model_type"
    if isinstance(node, ast.Name):
        return node.id == "model_type"
    if isinstance(node, ast.Call):
        function, args = node.func, node.args
        named = (isinstance(function, ast.Name) and function.id == "getattr" and len(args) > 1 and args[1]) or \
            (isinstance(function, ast.Attribute) and function.attr == "get" and args and args[0])
        return isinstance(named, ast.Constant) and named.value == "model_type"
    return False


def _is_model_type_string(node) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in modeling.ARCHITECTURES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(map(_is_model_type_string, node.elts))
    return False


def _is_registry(node) -> bool:
    return (isinstance(node, ast.Name) and node.id in REGISTRIES) or \
        (isinstance(node, ast.Attribute) and node.attr in REGISTRIES)


def _switches_on_model_type(node: ast.Compare) -> bool:
    operands = [node.left, *node.comparators]
    if any(map(_is_model_type_string, operands)):
        return True
    membership = len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) and _is_registry(operands[1])
    return not membership and any(map(_reads_model_type, operands))


def model_type_comparison_lines(source: str) -> list:
    """Lines of every comparison in `source` that reads a `model_type` (other than looking it up in a registry) or
    names a registered model_type string (alone or in a literal collection) on either side."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Compare) and _switches_on_model_type(node)]


def test_no_model_type_comparisons_outside_modeling():
    found = []
    for layer in LAYERS_ABOVE_MODELING:
        for path in sorted((ROOT / layer).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            found += [f"{name}:{line}" for line in model_type_comparison_lines(path.read_text())]
    assert not found, f"model_type compared outside modeling/ (ask modeling.diffusion_policy instead): {found}"


def test_the_scan_sees_the_comparisons_it_forbids():
    sample = """\
a = config.model_type == "x"
b = kind in ("mdlm", "other")
c = model_type != name
d = getattr(model.config, "model_type", None) in DIFFUSION_TYPES
e = saved.get("model_type") == wanted
f = {"mdlm": 1}["mdlm"]
g = config.get("model_type") not in modeling.ARCHITECTURES
h = model_type in DIFFUSION_POLICIES
i = diffusion_policy(model) is None
"""
    assert model_type_comparison_lines(sample) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("model_type", sorted(DIFFUSION_POLICIES))
def test_each_policy_answers_for_its_own_classes(model_type):
    policy = DIFFUSION_POLICIES[model_type]
    assert policy.model_type == model_type == policy.config_class.model_type
    assert policy.model_class.config_class is policy.config_class
    assert modeling.ARCHITECTURES[model_type][1]["AutoModelForMaskedLM"] is policy.model_class
    assert set(policy.required_fields) <= set(policy.config_class().to_dict())
    config = policy.config_class()
    assert diffusion_policy(config) is policy and require_diffusion_policy(config, "this test") is policy


def test_other_models_have_no_diffusion_policy():
    config = modeling.ARCHITECTURES["modded_gpt"][0]()
    assert diffusion_policy(config) is None and diffusion_policy(torch.nn.Linear(1, 1)) is None
    with pytest.raises(ValueError, match="this test needs a masked diffusion model.*modded_gpt"):
        require_diffusion_policy(config, "this test")
