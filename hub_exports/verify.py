"""Check that an exported folder is exactly what a Hub user will get, and that it works for them.

`verify(folder)` runs every check, prints nothing, and raises `VerificationError` (whose message is the full report)
if any fails. Checks: required and forbidden files; a complete `auto_map`; exported code identical to hubzoo's
`modeling/` sources; weights with no missing, unexpected, mis-shaped or non-finite tensors and a tied head stored once;
tokenizer ids within the vocabulary and special ids matching the config; a model card with metadata; a load through
the Auto classes with `trust_remote_code=True` in a fresh interpreter (class from `transformers_modules`, empty loading
info, zero warnings, head still tied); and logits equal to the reference model's.
"""

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

import modeling
from hub_exports.export import FORBIDDEN_FILES

SOURCE_ROOT = Path(modeling.__file__).parent
FRESH_LOADER = Path(__file__).with_name("fresh_process_load.py")
PROBE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world", "A third, somewhat longer probe text."]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class VerificationError(Exception):
    def __init__(self, report: str, checks: list):
        super().__init__(report)
        self.checks = checks


def verify(folder, reference_model=None, python: Optional[str] = None, atol: float = 1e-5) -> list:
    """Run every check on `folder`. `reference_model`: the in-memory model the export came from (default: hubzoo's
    local class loaded from the folder). `python`: interpreter for the fresh-process load (default: this one)."""
    folder = Path(folder).resolve()
    checks = [_check_files(folder)]
    config = _read_config(folder)
    if isinstance(config, Check):
        checks.append(config)
    else:
        checks += [_check_auto_map(config), _check_sources(folder, config)]
        if all(check.ok for check in checks):
            model_class = _saved_class(config)
            checks += [_check_weights(folder, config, model_class), _check_tokenizer(folder, config, model_class),
                       _check_card(folder)]
            if all(check.ok for check in checks):
                checks += _check_fresh_load(folder, config, reference_model, python or sys.executable, atol)
    if not all(check.ok for check in checks):
        raise VerificationError(format_report(folder, checks), checks)
    return checks


def format_report(folder: Path, checks: list) -> str:
    lines = [f"verify {folder}"]
    lines += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"FAILED: {', '.join(failed)}" if failed else f"PASSED: {len(checks)} checks")
    return "\n".join(lines)


def _check_files(folder: Path) -> Check:
    if not folder.is_dir():
        return Check("files", False, f"{folder} is not a directory")
    present = {p.name for p in folder.iterdir()}
    missing = [name for name in ("config.json", "model.safetensors", "README.md", "tokenizer.json",
                                 "tokenizer_config.json") if name not in present]
    forbidden = sorted(present.intersection(FORBIDDEN_FILES))
    problems = ([f"missing {missing}"] if missing else []) + ([f"must not ship {forbidden}"] if forbidden else [])
    return Check("files", not problems, "; ".join(problems) or f"{len(present)} files")


def _read_config(folder: Path):
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        return Check("config", False, f"config.json unreadable: {error}")
    if config.get("model_type") not in modeling.ARCHITECTURES:
        return Check("config", False, f"model_type {config.get('model_type')!r} is not a hubzoo architecture")
    config_class = modeling.ARCHITECTURES[config["model_type"]][0]
    try:
        return config_class.from_pretrained(folder)
    except (TypeError, ValueError) as error:
        return Check("config", False, f"{config_class.__name__} rejects config.json: {error}")


def _check_auto_map(config) -> Check:
    expected = modeling.auto_map(config.model_type)
    actual = getattr(config, "auto_map", None) or {}
    wrong = {key: actual.get(key) for key, value in expected.items() if actual.get(key) != value}
    architectures = getattr(config, "architectures", None) or []
    if wrong:
        return Check("auto_map", False, f"entries missing or wrong: {wrong} (expected {expected})")
    if len(architectures) != 1 or architectures[0] not in {v.split(".")[-1] for v in expected.values()}:
        return Check("auto_map", False, f"config.architectures={architectures} names no exported class")
    return Check("auto_map", True, f"{len(expected)} entries, saved class {architectures[0]}")


def _check_sources(folder: Path, config) -> Check:
    source_dir = SOURCE_ROOT / config.model_type
    exported = sorted(p.name for p in folder.glob("*.py"))
    needed = sorted({value.split(".")[0] + ".py" for value in modeling.auto_map(config.model_type).values()})
    problems = [f"{name} missing" for name in needed if name not in exported]
    for name in exported:
        source = source_dir / name
        if not source.is_file():
            problems.append(f"{name} is not a hubzoo source file")
        elif source.read_bytes() != (folder / name).read_bytes():
            problems.append(f"{name} differs from {source.relative_to(SOURCE_ROOT.parent)} (edited or stale code)")
    return Check("sources", not problems, "; ".join(problems) or f"{', '.join(exported)} identical to modeling/")


def _saved_class(config):
    return next(cls for cls in modeling.ARCHITECTURES[config.model_type][1].values()
                if cls.__name__ == config.architectures[0])


def _expected_tensors(config, model_class) -> tuple:
    """(shapes of the tensors the file must hold, tied target keys that must not be stored)."""
    with torch.device("meta"):
        model = model_class(config)
    tied = set(model_class._tied_weights_keys or {}) if config.tie_word_embeddings else set()
    shapes = {key: tuple(t.shape) for key, t in model.state_dict().items() if key not in tied}
    return shapes, tied


def _check_weights(folder: Path, config, model_class) -> Check:
    declared_tied = bool(model_class._tied_weights_keys)
    if declared_tied and not config.tie_word_embeddings:
        return Check("weights", False, f"untied head: config.tie_word_embeddings is false but {model_class.__name__}"
                                       f" ties {dict(model_class._tied_weights_keys)}")
    expected, tied = _expected_tensors(config, model_class)
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    problems = []
    if set(stored) & tied:
        problems.append(f"untied head: {sorted(set(stored) & tied)} stored separately from its tied source")
    if set(expected) - set(stored):
        problems.append(f"missing keys {sorted(set(expected) - set(stored))}")
    if set(stored) - set(expected) - tied:
        problems.append(f"unexpected keys {sorted(set(stored) - set(expected) - tied)}")
    problems += [f"{key}: shape {stored[key]} != {shape}" for key, shape in expected.items()
                 if key in stored and stored[key] != shape]
    if not problems:
        tensors = load_file(folder / "model.safetensors")
        problems += [f"{key} has non-finite values" for key, t in tensors.items()
                     if t.is_floating_point() and not torch.isfinite(t).all()]
    summary = f"{len(stored)} tensors, all expected keys and shapes" + (", tied head stored once" if tied else "")
    return Check("weights", not problems, "; ".join(problems) or summary)


def _check_tokenizer(folder: Path, config, model_class) -> Check:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except Exception as error:  # any failure to load is the finding
        return Check("tokenizer", False, f"does not load: {error}")
    problems = []
    largest = max(tokenizer.get_vocab().values())
    if len(tokenizer) > config.vocab_size or largest >= config.vocab_size:
        problems.append(f"{len(tokenizer)} tokens (largest id {largest}) do not fit vocab_size {config.vocab_size}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(config, name, None), getattr(tokenizer, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            problems.append(f"config.{name}={ours} but tokenizer {name}={theirs}")
    if model_class.__name__.endswith("ForMaskedLM") and tokenizer.mask_token_id is None:
        problems.append("no mask token for a masked LM")
    if set(tokenizer.model_input_names) - {"input_ids", "attention_mask"}:
        problems.append(f"tokenizer emits {tokenizer.model_input_names}, the model takes input_ids/attention_mask")
    return Check("tokenizer", not problems, "; ".join(problems) or f"{len(tokenizer)} tokens fit vocab_size "
                                                                  f"{config.vocab_size}, special ids match")


def _check_card(folder: Path) -> Check:
    try:
        card = ModelCard.load(folder / "README.md")
    except Exception as error:  # a card that does not parse is the finding
        return Check("model card", False, f"README.md does not parse: {error}")
    data = card.data.to_dict()
    problems = [f"metadata lacks {key}" for key in ("library_name", "pipeline_tag", "tags") if not data.get(key)]
    if "custom_code" not in (data.get("tags") or []):
        problems.append("tags lack custom_code")
    if "trust_remote_code=True" not in card.text:
        problems.append("no usage snippet with trust_remote_code=True")
    return Check("model card", not problems, "; ".join(problems) or f"pipeline_tag {data['pipeline_tag']}, "
                                                                    f"{len(data.get('model-index') or [])} model-index entries")


def _check_fresh_load(folder: Path, config, reference_model, python: str, atol: float) -> list:
    model_class = _saved_class(config)
    auto_class = next(name for name, cls in modeling.ARCHITECTURES[config.model_type][1].items() if cls is model_class)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    probe = dict(tokenizer(PROBE_TEXTS, padding=True, return_tensors="pt"))
    with tempfile.TemporaryDirectory(prefix="hubzoo-verify-") as scratch:
        scratch = Path(scratch)
        save_file({key: value.contiguous() for key, value in probe.items()}, scratch / "inputs.safetensors")
        report, error = _run_fresh(python, folder, auto_class, scratch)
        if error:
            return [Check("fresh-process load", False, error)]
        remote_logits = load_file(scratch / "logits.safetensors")["logits"]
    checks = [_judge_fresh_load(report, config, model_class)]
    reference = model_class.from_pretrained(folder) if reference_model is None else reference_model
    was_training = reference.training
    reference.eval()
    with torch.no_grad():
        outputs = reference(**probe)
    reference.train(was_training)
    ours = outputs.logits if hasattr(outputs, "logits") else outputs.last_hidden_state
    diff = (ours.float().cpu() - remote_logits.float()).abs().max().item()
    checks.append(Check("logits", diff <= atol, f"max |diff| {diff:.3g} vs reference (tolerance {atol:g}) on "
                                                f"{tuple(probe['input_ids'].shape)} probe tokens"))
    return checks


def _run_fresh(python: str, folder: Path, auto_class: str, scratch: Path) -> tuple:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(scratch / "modules"), HF_HOME=str(scratch / "hf_home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    command = [python, "-I", str(FRESH_LOADER), str(folder), auto_class, str(scratch / "inputs.safetensors"),
               str(scratch / "logits.safetensors")]
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None, f"{auto_class}.from_pretrained failed in a fresh process:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def _judge_fresh_load(report: dict, config, model_class) -> Check:
    problems = []
    if not report["class_module"].startswith("transformers_modules"):
        problems.append(f"class came from {report['class_module']}, not the exported code")
    if report["loading_info"]:
        problems.append(f"loading info not empty: {report['loading_info']}")
    if report["warnings"]:
        problems.append(f"warnings while loading: {report['warnings']}")
    if model_class._tied_weights_keys and config.tie_word_embeddings and report["tied"] is not True:
        problems.append("head not tied to the input embeddings after loading")
    if report["tokenizer_max_id"] >= config.vocab_size:
        problems.append(f"tokenizer produced id {report['tokenizer_max_id']} >= vocab_size {config.vocab_size}")
    detail = "; ".join(problems) or (f"{report['class_name']} from transformers_modules (transformers "
                                     f"{report['transformers_version']}), no warnings, empty loading info"
                                     + (", head tied" if report["tied"] else ""))
    return Check("fresh-process load", not problems, detail)
