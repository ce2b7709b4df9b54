"""Check that an exported folder is exactly what a Hub user will get, and that it works for them.

`verify(folder)` runs every check and raises `VerificationError` (whose message is the full report) if any fails:
  files       only the files an export ships (no pickles, optimizer state or subfolders)
  manifest    every file still has the sha256 recorded at export (`hubzoo_export.json`; the card may change)
  auto_map    AutoConfig and every task class of the architecture
  sources     the configuration/modeling files are byte-identical to hubzoo's `modeling/`
  weights     no missing, unexpected, mis-shaped or non-finite tensors; a tied head stored once
  tokenizer   ids fit the vocabulary, special ids match the config
  model card  parses, with metadata and a `trust_remote_code=True` usage snippet
  fresh-process load   Auto class + `trust_remote_code=True` in a new `python -I`: class from
              `transformers_modules`, empty loading info, zero warnings, head tied when the config ties it
  outputs     the fresh process reproduces the outputs recorded at export, its first features and the digest of
              all of them (and the in-memory model's outputs, if given)
  generate    (classes that can generate; every AutoModelForCausalLM class must) the fresh process generates
              GENERATE_TOKENS tokens greedily after the start of the first probe text, with and without the cache:
              no error, no warning, the same tokens
"""

import json
import os
import re
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
from hub_exports.adapter_files import (ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, is_adapter_folder,
                                       resolve_base_folder, trained_on)
from hub_exports.folder_swap import recover_killed_exports
from hub_exports.manifest import (MANIFEST, PROBE_SAMPLE_WIDTH, file_digest, output_digest, probe_outputs,
                                  read_json_object, read_manifest)
from hub_exports.tokenizer_checks import tokenizer_problems

SOURCE_ROOT = Path(modeling.__file__).parent
FRESH_LOADER = Path(__file__).with_name("fresh_process_load.py")
SHIPPED_FILES = {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", MANIFEST}
SHIPPED_CODE = re.compile(r"(configuration|modeling)_[a-z0-9_]+\.py")
# Warnings a load raises whatever the model, from one client library about another, hence no finding about the
# export: PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model, which
# transformers 5.2x answers with a FutureWarning. Every other warning fails the load.
FOREIGN_WARNINGS = ("FutureWarning: `is_gradient_checkpointing` is deprecated",)
GENERATE_TOKENS = 4  # new tokens of the generation check: enough to use the cache a few times, cheap on any model


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class VerificationError(Exception):
    def __init__(self, report: str, checks: list):
        super().__init__(report)
        self.checks = checks


def verify(folder, reference_model=None, python: Optional[str] = None, atol: Optional[float] = None,
           base=None) -> list:
    """Run every check on `folder`; return the checks or raise `VerificationError`. An adapter repo (a LoRA run's
    export) is checked by `verify_adapter` instead, on its base (`base`: a local copy of a base that the adapter
    names by Hub id).

    `reference_model`: the in-memory model the export came from, compared on the probe as well. `python`:
    interpreter for the fresh-process load (default: this one). `atol`: output tolerance (default 1e-5).
    A missing `folder` that a killed export left in a staging folder beside it is put back first.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        recover_killed_exports(folder)
    if not folder.is_dir():
        raise VerificationError(f"verify {folder}: not a directory", [])
    if is_adapter_folder(folder):
        return verify_adapter(folder, reference_model=reference_model, python=python, atol=atol, base=base)
    manifest = read_manifest(folder)
    checks = [_run_check("files", _check_files, folder), _run_check("manifest", _check_manifest, folder, manifest)]
    config = _read_config(folder)
    if isinstance(config, Check):
        checks.append(config)
    else:
        checks += [_run_check(name, step, folder, config) for name, step in (
            ("auto_map", _check_auto_map), ("sources", _check_sources), ("weights", _check_weights),
            ("tokenizer", _check_tokenizer), ("model card", _check_card))]
    if all(check.ok for check in checks):
        checks += _check_fresh_load(folder, config, manifest, reference_model, python or sys.executable,
                                    1e-5 if atol is None else atol)
    if not all(check.ok for check in checks):
        raise VerificationError(format_report(folder, checks), checks)
    return checks


def format_report(folder, checks: list) -> str:
    lines = [f"verify {folder}"]
    lines += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"FAILED: {', '.join(failed)}" if failed else f"PASSED: {len(checks)} checks")
    return "\n".join(lines)


def _run_check(name: str, step, *args) -> Check:
    """A check that cannot even run (e.g. an unreadable file) is a failed check, reported like the others."""
    try:
        return step(*args)
    except Exception as error:  # the report must name the fault, not end in a traceback
        return Check(name, False, f"could not be checked: {type(error).__name__}: {error}")


def _check_files(folder: Path) -> Check:
    present = {p.name for p in folder.iterdir()}
    required = {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json", MANIFEST}
    problems = [f"missing {sorted(required - present)}"] if required - present else []
    stray = sorted(name for name in present - SHIPPED_FILES if not SHIPPED_CODE.fullmatch(name))
    if stray:
        problems.append(f"files an export must not ship: {stray}")
    return Check("files", not problems, "; ".join(problems) or f"{len(present)} files, nothing else")


def _read_config(folder: Path):
    config = read_json_object(folder / "config.json")
    if config.get("model_type") not in modeling.ARCHITECTURES:
        return Check("config", False, f"model_type {config.get('model_type')!r} is not a hubzoo architecture")
    config_class = modeling.ARCHITECTURES[config["model_type"]][0]
    try:
        return config_class.from_pretrained(folder)
    except (TypeError, ValueError) as error:
        return Check("config", False, f"{config_class.__name__} rejects config.json: {error}")


def _check_manifest(folder: Path, manifest: dict) -> Check:
    recorded = manifest.get("files")
    if not recorded:
        return Check("manifest", False, f"{MANIFEST} missing or without file hashes; re-export the model")
    # Manifests written before the digest of all outputs was recorded are refused: they vouch for 16 features only.
    lacking = [key for key in ("probe", "probe_output_sample", "probe_output_digest") if key not in manifest]
    if lacking:
        return Check("manifest", False, f"{MANIFEST} lacks {lacking} (written by an older hubzoo); re-export the model")
    present = {p.name for p in folder.iterdir()} - {"README.md", MANIFEST}
    changed = sorted(name for name in present & set(recorded) if file_digest(folder / name) != recorded[name])
    problems = ([f"changed since export: {changed}"] if changed else []) + \
        ([f"not in the manifest: {sorted(present - set(recorded))}"] if present - set(recorded) else []) + \
        ([f"recorded but missing: {sorted(set(recorded) - present)}"] if set(recorded) - present else [])
    return Check("manifest", not problems, "; ".join(problems) or f"{len(recorded)} files match their export hashes")


def _check_auto_map(folder: Path, config) -> Check:
    expected = modeling.auto_map(config.model_type)
    actual = getattr(config, "auto_map", None) or {}
    wrong = {key: actual.get(key) for key, value in expected.items() if actual.get(key) != value}
    if wrong:
        return Check("auto_map", False, f"entries missing or wrong: {wrong} (expected {expected})")
    architectures = getattr(config, "architectures", None) or []
    try:
        modeling.task_class(config.model_type, architectures[0] if len(architectures) == 1 else None)
    except ValueError:
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


def _check_weights(folder: Path, config) -> Check:
    _, model_class = modeling.task_class(config.model_type, config.architectures[0])
    with torch.device("meta"):
        model = model_class(config)
    tied = set(model.all_tied_weights_keys) if config.tie_word_embeddings else set()
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items() if key not in tied}
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
        problems += [f"{key} has non-finite values" for key, t in load_file(folder / "model.safetensors").items()
                     if t.is_floating_point() and not torch.isfinite(t).all()]
    summary = f"{len(stored)} tensors, all expected keys and shapes" + (", tied head stored once" if tied else "")
    return Check("weights", not problems, "; ".join(problems) or summary)


def _check_tokenizer(folder: Path, config) -> Check:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    except Exception as error:  # any failure to load is the finding
        return Check("tokenizer", False, f"does not load: {error}")
    problems = tokenizer_problems(config, tokenizer, config.architectures[0])
    if set(tokenizer.model_input_names) - {"input_ids", "attention_mask"}:
        problems.append(f"tokenizer emits {tokenizer.model_input_names}, the model takes input_ids/attention_mask")
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and tokenizer.model_max_length > limit:
        problems.append(f"model_max_length {tokenizer.model_max_length} exceeds max_position_embeddings {limit}")
    detail = f"{len(tokenizer)} tokens fit vocab_size {config.vocab_size}, special ids match"
    return Check("tokenizer", not problems, "; ".join(problems) or detail)


def _check_card(folder: Path, config) -> Check:
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
    detail = f"pipeline_tag {data.get('pipeline_tag')}, {len(data.get('model-index') or [])} model-index entries"
    return Check("model card", not problems, "; ".join(problems) or detail)


def _check_fresh_load(folder: Path, config, manifest: dict, reference_model, python: str, atol: float,
                      adapter: Optional[Path] = None, adapted: Optional[dict] = None) -> list:
    """The fresh-process checks of the export in `folder` (of `config`), or of `adapter` put on it as its base.
    `adapted`: for an adapter trained on another task class of the base's architecture (a classifier over a language
    model), that class, its `from_pretrained` kwargs and the loading info it must give (the new head missing, the
    dropped head unexpected)."""
    adapted = adapted or {}
    auto_class, model_class = modeling.task_class(config.model_type, adapted.get("class") or config.architectures[0])
    probe = {key: torch.tensor(value) for key, value in manifest["probe"].items()}
    with tempfile.TemporaryDirectory(prefix="hubzoo-verify-") as scratch:
        scratch = Path(scratch)
        prompt, new_tokens = _generate_prompt(probe, config)
        save_file({**probe, "generate_prompt": prompt}, scratch / "inputs.safetensors")
        report, error = _run_fresh(python, folder, auto_class, scratch, new_tokens, adapter, adapted.get("kwargs"))
        if error:
            return [Check("fresh-process load", False, error)]
        remote = load_file(scratch / "outputs.safetensors")["outputs"]
    checks = [_judge_fresh_load(report, config, adapted.get("loading_info"))]
    problems, details = [], []
    fresh = {  # manifest key: what it holds, and the same taken from the fresh process's outputs
        "probe_output_sample": (f"first {PROBE_SAMPLE_WIDTH} features", remote[..., :PROBE_SAMPLE_WIDTH]),
        "probe_output_digest": (f"digest of all {remote.shape[-1]} features", output_digest(remote)),
    }
    for key, (what, ours) in fresh.items():
        recorded = torch.tensor(manifest[key], dtype=ours.dtype)
        if recorded.shape != ours.shape:
            problems.append(f"{key} recorded at export has shape {tuple(recorded.shape)}, the outputs give "
                            f"{tuple(ours.shape)}")
            continue
        diff = (ours - recorded).abs().max().item()
        details.append(f"max |diff| {diff:.3g} ({what}) vs outputs recorded at export")
        if diff > atol:
            problems.append(f"outputs differ from those recorded at export by {diff:.3g} ({what})")
    if reference_model is not None:
        diff = (probe_outputs(reference_model, probe) - remote).abs().max().item()
        details.append(f"{diff:.3g} vs the in-memory model")
        if diff > atol:
            problems.append(f"outputs differ from the in-memory model by {diff:.3g}")
    detail = "; ".join(problems) or f"{', '.join(details)} (tolerance {atol:g}, {tuple(remote.shape[:2])} probe)"
    checks.append(Check("outputs", not problems, detail))
    if report.get("auto_peft") is not None:
        checks.append(_judge_auto_peft(report["auto_peft"], atol))
    if report["generate"] is not None:
        checks.append(_judge_generation(report["generate"], new_tokens))
    elif auto_class == "AutoModelForCausalLM":  # loaded as a causal LM, it must generate
        checks.append(Check("generate", False, f"{report['class_name']} is loaded by AutoModelForCausalLM but cannot "
                                               "generate (no GenerationMixin)"))
    return checks


def _generate_prompt(probe: dict, config) -> tuple:
    """The first probe text's tokens (padding dropped) as a (1, length) prompt, and how many tokens to generate,
    both cut so that prompt and new tokens fit in `max_position_embeddings`."""
    ids = probe["input_ids"][0][probe["attention_mask"][0].bool()] if "attention_mask" in probe \
        else probe["input_ids"][0]
    limit = getattr(config, "max_position_embeddings", None) or len(ids) + GENERATE_TOKENS
    new_tokens = max(1, min(GENERATE_TOKENS, limit - 1))
    return ids[:max(1, min(len(ids), limit - new_tokens))][None].contiguous(), new_tokens


def _judge_generation(result: dict, new_tokens: int) -> Check:
    if "error" in result:
        return Check("generate", False, f"greedy generate failed in the fresh process: {result['error']}")
    problems = []
    prompt, cached, uncached = result["prompt"][0], result["cached"][0], result["uncached"][0]
    if cached != uncached:
        problems.append(f"greedy tokens with the cache {cached[len(prompt):]} differ from those without it "
                        f"{uncached[len(prompt):]} (prompt {prompt})")
    if any(row[:len(prompt)] != prompt for row in (cached, uncached)):
        problems.append("the generated sequence does not start with the prompt")
    if len(cached) == len(prompt):
        problems.append("no token generated")
    if len(cached) > len(prompt) + new_tokens:
        problems.append(f"{len(cached) - len(prompt)} tokens generated, {new_tokens} asked for")
    if result["warnings"]:
        problems.append(f"warnings while generating: {result['warnings']}")
    detail = "; ".join(problems) or (f"{len(cached) - len(prompt)} greedy tokens after a {len(prompt)}-token prompt, "
                                     "the same with and without the cache, no warnings")
    return Check("generate", not problems, detail)


def _judge_auto_peft(result: dict, atol: float) -> Check:
    if "error" in result:
        return Check("AutoPeftModel load", False, f"AutoPeftModelForCausalLM.from_pretrained failed: {result['error']}")
    problems = [f"warnings: {own_warnings(result['warnings'])}"] if own_warnings(result["warnings"]) else []
    if result["max_diff"] > atol:
        problems.append(f"outputs differ from base + PeftModel.from_pretrained by {result['max_diff']:.3g}")
    return Check("AutoPeftModel load", not problems, "; ".join(problems) or
                 f"AutoPeftModelForCausalLM: max |diff| {result['max_diff']:.3g} vs base + adapter, no warnings")


def _run_fresh(python: str, folder: Path, auto_class: str, scratch: Path, new_tokens: int,
               adapter: Optional[Path] = None, load_kwargs: Optional[dict] = None) -> tuple:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(scratch / "modules"), HF_HOME=str(scratch / "hf_home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    command = [python, "-I", str(FRESH_LOADER), str(folder), auto_class, str(scratch / "inputs.safetensors"),
               str(scratch / "outputs.safetensors"), str(new_tokens)] + \
        ([str(adapter), json.dumps(load_kwargs or {})] if adapter else [])
    try:
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return None, f"{auto_class}.from_pretrained did not finish within 900 s in a fresh process"
    if done.returncode != 0:
        return None, f"{auto_class}.from_pretrained failed in a fresh process:\n{done.stderr[-3000:]}"
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), None
    except (IndexError, ValueError):
        return None, f"fresh process printed no report:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


def own_warnings(messages: list) -> list:
    """The warnings that are findings about the export (all but FOREIGN_WARNINGS)."""
    return [message for message in messages if not message.startswith(FOREIGN_WARNINGS)]


def _judge_fresh_load(report: dict, config, expected_info: Optional[dict] = None) -> Check:
    """`expected_info`: the loading info a task-changing adapter's base must give (module docstring of
    hub_exports.adapters); the load report that names exactly those keys is then no finding."""
    problems = []
    expected_info = {key: value for key, value in (expected_info or {}).items() if value}
    messages = report["warnings"]
    if not report["class_module"].startswith("transformers_modules"):
        problems.append(f"class came from {report['class_module']}, not the exported code")
    if report["loading_info"] != expected_info:
        problems.append(f"loading info {report['loading_info'] or 'empty'}, expected {expected_info or 'empty'}")
    elif expected_info:  # transformers' report of those keys (5.x: one LOAD REPORT table; 4.x: "Some weights ...")
        messages = [message for message in messages if "LOAD REPORT" not in message
                    and "Some weights of" not in message]
    if own_warnings(messages):
        problems.append(f"warnings while loading: {own_warnings(messages)}")
    # Judged from the loaded model itself, not from what the class declares: a class that forgot its tie must fail.
    if report["tied"] is False and config.tie_word_embeddings:
        problems.append("untied head: config.tie_word_embeddings is true but the loaded output embedding does not "
                        "share the input embedding")
    if report["tokenizer_max_id"] >= config.vocab_size:
        problems.append(f"tokenizer produced id {report['tokenizer_max_id']} >= vocab_size {config.vocab_size}")
    loaded = f"no other warnings, loading info as expected ({expected_info})" if expected_info else \
        "no warnings, empty loading info"
    detail = "; ".join(problems) or (f"{report['class_name']} from transformers_modules (transformers "
                                     f"{report['transformers_version']}), {loaded}"
                                     + (", head tied" if report["tied"] else ""))
    return Check("fresh-process load", not problems, detail)


# ---- adapter repos (hub_exports/adapters.py says what they hold) ----
def verify_adapter(folder, reference_model=None, python: Optional[str] = None, atol: Optional[float] = None,
                   base=None) -> list:
    """Every check of an adapter repo (hub_exports/adapters.py): the files, the manifests of both, the adapter config
    and weights, the card, and the fresh-process load of base + adapter; returns them or raises VerificationError."""
    folder = Path(folder).resolve()
    manifest = read_manifest(folder)
    checks = [_run_check("files", _check_adapter_files, folder),
              _run_check("manifest", _check_manifest, folder, manifest)]
    try:
        base_folder = resolve_base_folder(folder, base)
    except ValueError as error:
        checks.append(Check("base", False, str(error)))
        raise VerificationError(format_report(folder, checks), checks) from None
    config = _read_config(base_folder)
    if isinstance(config, Check):
        checks.append(config)
    else:
        checks += [_run_check("base", _check_base, folder, manifest, base_folder),
                   _run_check("adapter config", _check_adapter_config, folder, manifest),
                   _run_check("adapter weights", _check_adapter_weights, folder),
                   _run_check("model card", _check_adapter_card, folder)]
    if all(check.ok for check in checks):
        checks += _check_fresh_load(base_folder, config, manifest, reference_model, python or sys.executable,
                                    1e-5 if atol is None else atol, adapter=folder,
                                    adapted=manifest.get("adapter", {}).get("adapted"))
    if not all(check.ok for check in checks):
        raise VerificationError(format_report(folder, checks), checks)
    return checks


def _check_adapter_files(folder: Path) -> Check:
    present = {path.name for path in folder.iterdir()}
    problems = [f"missing {sorted(ADAPTER_FILES - present)}"] if ADAPTER_FILES - present else []
    if present - ADAPTER_FILES:
        problems.append(f"files an adapter repo must not ship: {sorted(present - ADAPTER_FILES)}")
    return Check("files", not problems, "; ".join(problems) or f"{len(present)} files, nothing else")


def _check_base(folder: Path, manifest: dict, base_folder: Path) -> Check:
    """The base is the export the adapter was trained on (its manifest's sha256), and unchanged since (its files)."""
    if "base_manifest_sha256" not in manifest.get("adapter", {}):
        return Check("base", False, f"{MANIFEST} does not record the base; re-export the adapter")
    if not trained_on(manifest, base_folder):
        return Check("base", False, f"{base_folder} is not the export this adapter was trained on (its {MANIFEST} "
                                    "differs from the one recorded at export)")
    base_files = _check_manifest(base_folder, read_manifest(base_folder))
    if not base_files.ok:
        return Check("base", False, f"{base_folder}: {base_files.detail}")
    return Check("base", True, f"{base_folder}, the export trained on ({base_files.detail})")


def _check_adapter_config(folder: Path, manifest: dict) -> Check:
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(folder)
    problems = [] if config.peft_type == "LORA" else [f"peft_type {config.peft_type}, hubzoo exports LoRA only"]
    named = manifest.get("adapter", {}).get("base_model_name_or_path")
    if config.base_model_name_or_path != named:
        problems.append(f"base_model_name_or_path {config.base_model_name_or_path!r}, recorded at export {named!r}")
    return Check("adapter config", not problems, "; ".join(problems) or
                 f"LoRA r {config.r} on {len(config.target_modules)} modules, base {config.base_model_name_or_path}")


def _check_adapter_weights(folder: Path) -> Check:
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    problems = [f"{key} has non-finite values" for key, tensor in tensors.items()
                if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if not tensors:
        problems.append("no tensors")
    return Check("adapter weights", not problems, "; ".join(problems) or f"{len(tensors)} tensors, all finite")


def _check_adapter_card(folder: Path) -> Check:
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    named = read_json_object(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    problems = [f"metadata lacks {key}" for key in ("library_name", "base_model", "tags") if not data.get(key)]
    if data.get("library_name") not in (None, "peft"):
        problems.append(f"library_name {data['library_name']!r}, not peft")
    if data.get("base_model") not in (None, named):
        problems.append(f"base_model {data['base_model']!r}, the adapter config names {named!r}")
    if "PeftModel.from_pretrained" not in card.text or "trust_remote_code=True" not in card.text:
        problems.append("no usage snippet with trust_remote_code=True and PeftModel.from_pretrained")
    return Check("model card", not problems, "; ".join(problems) or f"base_model {named}, library peft")
