"""The copies between exported modeling folders match their originals (utils/check_copies.py), and the checker finds
and repairs a drifted copy, a marker naming nothing, and renames."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.check_copies import ROOT, check_copies, main

def write_tree(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def modeling_copy(tmp_path) -> Path:
    shutil.copytree(ROOT / "modeling", tmp_path / "modeling", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_repository_copies_match_their_originals():
    assert check_copies() == []


@pytest.mark.parametrize("file,line,changed,original", [
    # `modulate`, inside the shared DiT section
    ("modeling/bd3lm/modeling_bd3lm.py", "    return x * (1 + scale) + shift", "    return x * (1 + scale) - shift",
     "modeling.mdlm.modeling_mdlm[shared DiT]"),
    # a method, copied at class depth
    ("modeling/modded_gpt/modeling_modded_gpt.py",
     '        return tensor.device.type == "cpu" or self.check_values_on_device', '        return False',
     "modeling.ltg_bert.modeling_ltg_bert.LtgBertPreTrainedModel._values_checked"),
])
def test_a_changed_line_in_a_copy_is_named_and_fixed(modeling_copy, file, line, changed, original):
    path = modeling_copy / file
    before = path.read_text()
    assert before.count(line + "\n") == 1
    path.write_text(before.replace(line + "\n", changed + "\n"))
    run = subprocess.run([sys.executable, "-m", "utils.check_copies", "--root", str(modeling_copy)], cwd=ROOT,
                         capture_output=True, text=True)
    problems = [row for row in run.stderr.splitlines() if not row.startswith("    ")]  # the diff rows are indented
    assert run.returncode == 1 and len(problems) == 1 and problems[0].startswith(f"{file}:"), run.stderr
    assert f"the copy of {original} differs from it at line {before.splitlines().index(line) + 1}" in problems[0]
    assert {f"    -{line}", f"    +{changed}"} <= set(run.stderr.splitlines())  # the diff: original -, copy +
    assert main(["--root", str(modeling_copy), "--fix_and_overwrite"]) == 0
    assert path.read_text() == before
    assert check_copies(modeling_copy) == []


ORIGINAL = """
    class AlphaBlock:
        def forward(self, x):
            return ALPHA_SCALE * alpha_helper(x)
"""
BETA = "class BetaBlock:\n    def forward(self, x):\n        return BETA_SCALE * beta_helper(x)\n"


@pytest.mark.parametrize("marker,copy,problem", [
    ("# Copied from modeling.a.modeling_a.AlphaBlock with Alpha->Beta,alpha->beta,ALPHA->BETA", BETA, None),
    ("# Copied from modeling.a.modeling_a.AlphaBlock with Alpha->Beta all-casing", BETA, None),
    ("# Copied from modeling.a.modeling_a.AlphaBlock with Alpha->Beta", BETA, "differs"),  # alpha_helper stays
    ("# Copied from modeling.a.modeling_a.AlphaBlock.backward",
     "def backward(self, x):\n    return x\n", "no class or def AlphaBlock.backward in modeling/a/modeling_a.py"),
    ("# Copied from modeling.a.modeling_b.AlphaBlock", "class AlphaBlock:\n    pass\n", "names no module"),
    ("# Copied from modeling.a.modeling_a.AlphaBlock", "ALPHA = 1\n", "right above the class or def"),
    ("# Copied from modeling.a.modeling_a[shared]", "# ---- shared (begin)\n", "no line '# ---- shared (end)'"),
])
def test_markers(tmp_path, marker, copy, problem):
    root = write_tree(tmp_path, {"modeling/a/modeling_a.py": ORIGINAL,
                                 "modeling/b/modeling_b.py": f"{marker}\n{copy}"})
    problems = check_copies(root)
    if problem is None:
        assert problems == []
    else:
        (found,) = problems
        assert found.startswith("modeling/b/modeling_b.py:1: ") and problem in found


def test_a_copy_of_a_copy_follows_the_copy_it_names(tmp_path):
    """b copies a's function as a method (indented), c copies b's method as a function: c is compared with b alone,
    and a fix reaches c through b."""
    root = write_tree(tmp_path, {
        "modeling/a/modeling_a.py": "def scale(x):\n    return 2 * x\n",
        "modeling/b/modeling_b.py": "class B:\n    # Copied from modeling.a.modeling_a.scale\n"
                                    "    def scale(x):\n        return 2 * x\n",
        "modeling/c/modeling_c.py": "# Copied from modeling.b.modeling_b.B.scale\ndef scale(x):\n    return 2 * x\n",
    })
    assert check_copies(root) == []
    (root / "modeling/a/modeling_a.py").write_text("def scale(x):\n    return 3 * x\n")
    (problem,) = check_copies(root)
    assert problem.startswith("modeling/b/modeling_b.py:2: ")
    assert check_copies(root, fix=True) == []
    assert (root / "modeling/c/modeling_c.py").read_text().endswith("    return 3 * x\n")
