"""MDLM and BD3-LM each export a self-contained modeling file, so both carry the DiT code: the shared sections (and
the shared config validation) must stay byte-identical, as transformers' "Copied from" checks do."""

import re
from pathlib import Path

import modeling

ROOT = Path(modeling.__file__).parent


def section(path: Path, begin: str, end: str) -> str:
    text = path.read_text()
    match = re.search(re.escape(begin) + r".*?" + re.escape(end), text, flags=re.S)
    assert match, f"{path.name} lacks the shared section {begin!r}"
    return match.group(0)


def test_dit_code_is_identical_in_both_modeling_files():
    begin, end = "# ---- shared DiT (begin)", "# ---- shared DiT (end) ----"
    mdlm = section(ROOT / "mdlm" / "modeling_mdlm.py", begin, end)
    bd3lm = section(ROOT / "bd3lm" / "modeling_bd3lm.py", begin, end)
    assert mdlm == bd3lm, "edit the shared DiT in both modeling files alike"
    assert "class DiTBlock" in mdlm and "def masked_diffusion_nelbo" in mdlm


def test_config_validation_is_identical():
    begin, end = "def validate_dit_fields", "__all__"
    assert section(ROOT / "mdlm" / "configuration_mdlm.py", begin, end) == \
        section(ROOT / "bd3lm" / "configuration_bd3lm.py", begin, end)
