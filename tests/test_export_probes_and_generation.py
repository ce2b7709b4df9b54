"""What export probes and what verify runs in its fresh process beyond the load (issue 15, points 9 and 11).

verify generates greedily with every class that can generate, with and without the cache, under this interpreter and
under transformers 4.57: a model file that breaks `generate`, or whose cache changes the tokens, fails verify with
the reason. export probes with texts cut to the model's `max_position_embeddings`, so a model with few positions (a
converted nanoBackpackLM: 32 positions and a byte tokenizer) can be exported, and the manifest says what was probed.
"""

import json
import shutil
from pathlib import Path

import pytest

from hub_exports import VerificationError, export, verify
from hub_exports import verification
from hub_exports.manifest import MANIFEST, PROBE_TEXTS, file_digest
from modeling.backpack import BackpackConfig, BackpackForCausalLM
from modeling.latent_wire.tokenization_bytes import byte_tokenizer
from modeling.ltg_bert import LtgBertForMaskedLM
from modeling.modded_gpt import ModdedGptForCausalLM
# The declarations' modules, not their Test classes: imported by name, pytest would collect and run them here too.
from tests.models.backpack import test_modeling_backpack as backpack_declared
from tests.models.ltg_bert import test_modeling_ltg_bert as ltg_bert_declared
from tests.models.modded_gpt import test_modeling_modded_gpt as modded_gpt_declared

GENERATIVE = {"modded_gpt": (modded_gpt_declared.TestModdedGpt, ModdedGptForCausalLM),
              "backpack_stanford": (backpack_declared.TestBackpackStanford, BackpackForCausalLM),
              "backpack_nano": (backpack_declared.TestBackpackNano, BackpackForCausalLM)}


def export_declared(declaration, model_class, folder, **overrides):
    model = declaration().build(model_class, **overrides)
    return export(model, declaration().export_tokenizer(model.config), folder)


@pytest.fixture(scope="module")
def backpack_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate") / "backpack"
    return export_declared(backpack_declared.TestBackpackStanford, BackpackForCausalLM, folder)


def sabotage(folder: Path, tmp_path: Path, monkeypatch, code: str) -> None:
    """Append `code` to the export's modeling file, as an edited modeling/ would ship it: the same edit goes into a
    copy of modeling/ that verify then compares the sources with, and the manifest is rehashed, so that only the
    behaviour of the code is left for verify to catch."""
    sources = Path(shutil.copytree(verification.SOURCE_ROOT, tmp_path / "modeling"))
    for root in (folder, sources / "backpack"):
        path = root / "modeling_backpack.py"
        path.write_text(path.read_text() + "\n\n" + code)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["modeling_backpack.py"] = file_digest(folder / "modeling_backpack.py")
    (folder / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(verification, "SOURCE_ROOT", sources)


def failed_checks(folder, **kwargs) -> dict:
    with pytest.raises(VerificationError) as caught:
        verify(folder, **kwargs)
    return {check.name: check.detail for check in caught.value.checks if not check.ok}


def test_verify_generates_with_a_causal_lm_and_not_with_a_masked_lm(backpack_export, tmp_path):
    checks = {check.name: check for check in verify(backpack_export)}
    assert checks["generate"].ok and "the same with and without the cache" in checks["generate"].detail
    masked = export_declared(ltg_bert_declared.TestLtgBert, LtgBertForMaskedLM, tmp_path / "ltg_bert")
    assert "generate" not in {check.name for check in verify(masked)}


def test_verify_fails_an_export_whose_generate_raises(backpack_export, tmp_path, monkeypatch):
    """The forward and its outputs are untouched; only generation breaks, as on transformers 4.57 today."""
    folder = Path(shutil.copytree(backpack_export, tmp_path / "broken"))
    sabotage(folder, tmp_path, monkeypatch, (
        "def _refuse(self, *args, **kwargs):\n"
        "    raise RuntimeError('sabotaged generation step')\n"
        "BackpackForCausalLM.prepare_inputs_for_generation = _refuse\n"))
    failed = failed_checks(folder)
    assert list(failed) == ["generate"], failed
    assert "RuntimeError: sabotaged generation step" in failed["generate"]


def test_verify_fails_an_export_whose_cache_changes_the_tokens(backpack_export, tmp_path, monkeypatch):
    """A forward on one new token (only a cached step takes one: the prompt has 10, generation without the cache
    re-reads it all) negates its logits, so greedy decoding picks the least likely token there: the outputs check
    and the generation without cache are unchanged, the cached generation is not."""
    folder = Path(shutil.copytree(backpack_export, tmp_path / "broken"))
    sabotage(folder, tmp_path, monkeypatch, (
        "import functools\n"
        "_forward = BackpackForCausalLM.forward\n"
        "@functools.wraps(_forward)  # generate validates its kwargs against the forward's signature\n"
        "def _sabotaged(self, *args, **kwargs):\n"
        "    outputs = _forward(self, *args, **kwargs)\n"
        "    ids = kwargs['input_ids'] if 'input_ids' in kwargs else args[0]\n"
        "    if ids.shape[1] == 1:\n"
        "        outputs.logits = -outputs.logits\n"
        "    return outputs\n"
        "BackpackForCausalLM.forward = _sabotaged\n"))
    failed = failed_checks(folder)
    assert list(failed) == ["generate"], failed
    assert "differ from those without it" in failed["generate"]


def test_verify_fails_a_causal_lm_that_cannot_generate(backpack_export, tmp_path, monkeypatch):
    """A causal LM whose class lost generation (e.g. GenerationMixin dropped from its bases) is not skipped."""
    folder = Path(shutil.copytree(backpack_export, tmp_path / "broken"))
    sabotage(folder, tmp_path, monkeypatch, "BackpackForCausalLM.can_generate = classmethod(lambda cls: False)\n")
    failed = failed_checks(folder)
    assert list(failed) == ["generate"], failed
    assert "cannot generate" in failed["generate"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GENERATIVE))
def test_every_generative_export_generates_on_transformers_4_57(name, tmp_path):
    """The whole fresh-process verification, generation included, under transformers 4.57.6."""
    from tests.compat_env import compat_python

    declaration, model_class = GENERATIVE[name]
    folder = export_declared(declaration, model_class, tmp_path / name)
    try:
        checks = {check.name: check for check in verify(folder, python=str(compat_python("4.57.6")))}
    except VerificationError as error:
        pytest.fail(str(error))
    assert "transformers 4.57.6" in checks["fresh-process load"].detail
    assert checks["generate"].ok


def test_export_cuts_the_probe_to_a_model_with_few_positions(tmp_path):
    """A converted nanoBackpackLM's shape: 32 positions, one id per byte (the first probe text has 44 bytes)."""
    tokenizer = byte_tokenizer()
    config = BackpackConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32,
                            num_senses=4, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                            sense_intermediate_size=40, max_position_embeddings=32, sense_network="nano")
    folder = export(BackpackForCausalLM(config).eval(), tokenizer, tmp_path / "nano")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [len(row) for row in manifest["probe"]["input_ids"]] == [32, 32, 32]
    byte_lengths = [len(text.encode()) for text in PROBE_TEXTS]
    assert max(byte_lengths) > 32  # else this test would not probe a cut at all
    assert manifest["probe_texts"] == [{"text": text, "tokens": length, "probed_tokens": min(length, 32)}
                                       for text, length in zip(PROBE_TEXTS, byte_lengths)]
    checks = {check.name: check for check in verify(folder)}
    assert checks["generate"].ok and "after a 28-token prompt" in checks["generate"].detail


def test_export_cuts_the_probe_of_a_word_level_masked_lm(tmp_path):
    """Six positions: the two longer probe texts are cut, the short one is not; the exported model verifies."""
    folder = export_declared(ltg_bert_declared.TestLtgBert, LtgBertForMaskedLM, tmp_path / "short",
                             max_position_embeddings=6)
    manifest = json.loads((folder / MANIFEST).read_text())
    whole = [len(text.replace(".", " .").replace(",", " ,").split()) for text in PROBE_TEXTS]  # Whitespace split
    assert [entry["tokens"] for entry in manifest["probe_texts"]] == whole
    assert [entry["probed_tokens"] for entry in manifest["probe_texts"]] == [min(n, 6) for n in whole]
    assert len(manifest["probe"]["input_ids"][0]) == 6
    verify(folder)
