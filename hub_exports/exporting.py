"""Write a trained hubzoo model as a complete, verified `trust_remote_code` Hub repo folder.

The folder holds: `config.json` with the full `auto_map`, the configuration/modeling files copied from `modeling/`
(the files the model was trained with), `model.safetensors`, the tokenizer, a model card (`README.md`) and
`hubzoo_export.json` (the sha256 of every other file, plus probe inputs and the outputs the exported model gave on
them). Everything is written into a staging folder next to the target and verified there; only a folder that passes
replaces the target, and an existing export survives any failure or kill: the two folders are exchanged in one step
where the system can (Linux, macOS), and the next export or `verify` repairs a kill between the two renames of the
fallback. Only an empty folder or a hubzoo export is ever replaced (`check_export_target`).
"""

import copy
import ctypes
import errno
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

import modeling

logger = logging.getLogger(__name__)
CARD_DIR = Path(__file__).with_name("model_cards")
MANIFEST = "hubzoo_export.json"
PROBE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world", "A third, somewhat longer probe text."]
PROBE_SAMPLE_WIDTH = 16  # output features per position kept in the manifest (keeps it small for any vocab size)
PROBE_DIGEST_SLICES = 64  # slices of all output features per position summed in the manifest (see output_digest)
# A staging folder: `staging_<target name>_<pid>_<8 hex>`, holding STAGING_MARKER (written first) and the export.
STAGING_NAME = re.compile(r"staging_(?P<target>.+)_(?P<pid>[0-9]+)_[0-9a-f]{8}")
STAGING_MARKER = "hubzoo_staging.json"

# What the card says for the class that was saved: pipeline tag and a runnable usage line.
TASKS = {
    "AutoModelForMaskedLM": (
        "fill-mask",
        'inputs = tokenizer(f"The capital of France is {tokenizer.mask_token}.", return_tensors="pt")\n'
        "logits = model(**inputs).logits",
    ),
    "AutoModelForCausalLM": (
        "text-generation",
        'inputs = tokenizer("The meaning of life is", return_tensors="pt")\n'
        "output_ids = model.generate(**inputs, max_new_tokens=20, do_sample=False)\n"
        "print(tokenizer.decode(output_ids[0]))",
    ),
    "AutoModelForSequenceClassification": (
        "text-classification",
        'logits = model(**tokenizer("A sentence to classify.", return_tensors="pt")).logits',
    ),
    "AutoModelForTokenClassification": (
        "token-classification",
        'logits = model(**tokenizer("A sentence to tag.", return_tensors="pt")).logits',
    ),
    "AutoModel": (
        "feature-extraction",
        'hidden = model(**tokenizer("A sentence to embed.", return_tensors="pt")).last_hidden_state',
    ),
}


# Classes whose card shows another usage than their Auto class's task (diffusion LMs sample rather than fill masks).
USAGE_BY_CLASS = {
    name: "samples = model.sample(num_samples=2, seed=0)\nprint(tokenizer.batch_decode(samples))"
    for name in ("MdlmForMaskedDiffusionLM", "Bd3lmForMaskedDiffusionLM")
}
USAGE_BY_CLASS["LatentWireModel"] = (
    "model.load_decoders()  # the frozen decoders named in config.decoders (or attach_decoder(name, lm, tok))\n"
    'texts = tokenizer(["Context: ... Question: ..."], return_tensors="pt", padding=True)\n'
    "for name in model.decoders:\n"
    "    answer_ids = model.generate_with(name, **texts, max_new_tokens=12, do_sample=False)\n"
    "    print(name, model.decoder_tokenizers[name].batch_decode(answer_ids, skip_special_tokens=True))"
)


@dataclass
class Metric:
    """One evaluation result for the card's `model-index` (e.g. task "fill-mask", metric "accuracy")."""

    task_type: str
    dataset_name: str
    dataset_type: str
    metric_type: str
    metric_value: float
    metric_name: Optional[str] = None
    dataset_split: Optional[str] = None


@dataclass
class CardInfo:
    """What the model card says beyond what the model itself tells."""

    repo_id: Optional[str] = None  # where it will live on the Hub; used in the usage snippet
    description: str = "A hubzoo model."
    training_data: str = "Not documented."
    training_procedure: str = "Not documented."
    limitations: str = "Not documented."
    datasets: list = field(default_factory=list)  # Hub dataset ids, if any
    language: Optional[str] = "en"
    license: str = "apache-2.0"
    metrics: list = field(default_factory=list)  # list[Metric]


def tokenizer_problems(config, tokenizer, class_name: str) -> list:
    """Everything that makes `tokenizer` unfit for a model with `config` (shared by export and verify)."""
    problems = []
    largest = max(tokenizer.get_vocab().values())
    if len(tokenizer) > config.vocab_size or largest >= config.vocab_size:
        problems.append(f"{len(tokenizer)} tokens (largest id {largest}) do not fit vocab_size {config.vocab_size}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ours, theirs = getattr(config, name, None), getattr(tokenizer, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            problems.append(f"config.{name}={ours} but tokenizer {name}={theirs}")
    if tokenizer.pad_token_id is None:
        problems.append("no pad token, so batches cannot be padded")
    if class_name.endswith("ForMaskedLM") and tokenizer.mask_token_id is None:
        problems.append("no mask token for a masked LM")
    mask_id = getattr(config, "mask_token_id", None)
    if mask_id is not None and tokenizer.mask_token_id is not None and mask_id != tokenizer.mask_token_id:
        problems.append(f"config.mask_token_id={mask_id} but tokenizer mask_token_id={tokenizer.mask_token_id}")
    return problems


def load_checkpoint(folder):
    """Load a saved hubzoo model folder (e.g. a Trainer checkpoint) with the local classes, strictly.

    Refuses a folder whose own modeling code differs from `modeling/`: exporting it would ship other code than the
    code that produced the weights.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or [None]
    _, model_class = modeling.task_class(config.get("model_type"), architectures[0])
    source_dir = Path(modeling.__file__).parent / config["model_type"]
    for code in folder.glob("*.py"):
        source = source_dir / code.name
        if source.is_file() and source.read_bytes() != code.read_bytes():
            raise ValueError(f"{code} differs from {source}: the checkpoint was saved by other modeling code")
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    problems = {key: sorted(map(str, value)) for key, value in info.items() if value}
    if problems:
        raise ValueError(f"{folder} does not load cleanly: {problems}")
    return model


def build_model_card(model, card: CardInfo) -> ModelCard:
    model_type = model.config.model_type
    auto_class, _ = modeling.task_class(model_type, type(model).__name__)
    pipeline_tag, usage = TASKS[auto_class]
    usage = USAGE_BY_CLASS.get(type(model).__name__, usage)
    eval_results = [
        EvalResult(task_type=m.task_type, dataset_name=m.dataset_name, dataset_type=m.dataset_type,
                   metric_type=m.metric_type, metric_value=m.metric_value, metric_name=m.metric_name,
                   dataset_split=m.dataset_split)
        for m in card.metrics
    ]
    model_name = (card.repo_id or model_type).split("/")[-1]
    data = ModelCardData(
        language=card.language, license=card.license, library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["hubzoo", model_type, "custom_code"], datasets=card.datasets or None,
        model_name=model_name if eval_results else None, eval_results=eval_results or None,
    )
    citation = CARD_DIR / f"{model_type}.bib"
    other = [name for name in modeling.auto_map(model_type) if name not in ("AutoConfig", auto_class)]
    return ModelCard.from_template(
        data,
        template_path=str(CARD_DIR / "template.md"),
        model_name=model_name,
        repo_id=card.repo_id or "path/to/this/folder",
        description=card.description,
        architecture=type(model).__name__,
        model_type=model_type,
        num_parameters=f"{model.num_parameters():,}",
        hubzoo_version=metadata.version("hubzoo"),
        transformers_version=transformers.__version__,
        architecture_notes=(CARD_DIR / f"{model_type}.md").read_text().strip(),
        auto_class=auto_class,
        usage_example=usage,
        other_auto_classes=", ".join(f"`{name}`" for name in other),
        training_data=card.training_data,
        training_procedure=card.training_procedure,
        metrics_table="".join(
            f"| {m.task_type} | {m.dataset_name} | {m.metric_name or m.metric_type} | {m.metric_value} |\n"
            for m in card.metrics
        ),
        limitations=card.limitations,
        citation=citation.read_text().strip() if citation.exists() else "",
    )


def add_results_to_card(folder, metrics: list, section: str) -> None:
    """Append evaluation results to an export's card: `model-index` entries plus a markdown section. The card is
    the one file the manifest leaves out, so the export still verifies."""
    path = Path(folder) / "README.md"
    card = ModelCard.load(path)
    results = list(card.data.eval_results or []) + [
        EvalResult(task_type=m.task_type, dataset_name=m.dataset_name, dataset_type=m.dataset_type,
                   metric_type=m.metric_type, metric_value=m.metric_value, metric_name=m.metric_name,
                   dataset_split=m.dataset_split)
        for m in metrics
    ]
    card.data.eval_results = results
    card.data.model_name = card.data.model_name or Path(folder).resolve().name
    card.text = card.text.rstrip() + "\n\n" + section.strip() + "\n"
    card.save(path)


def main_output(outputs) -> torch.Tensor:
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


@contextmanager
def full_fp32_matmuls():
    """Training may enable TF32 (10-bit mantissa matmuls), which moves logits by ~1e-2; fingerprints need fp32.

    torch >= 2.9 has a new per-backend switch and refuses to read the legacy flag once the new one was used (as
    Trainer does for `tf32=True`), so the new switch is used where it exists."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
    else:
        saved = matmul.allow_tf32
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = saved
        else:
            matmul.allow_tf32 = saved


def cpu_copy(model):
    """A copy of `model` with every parameter and buffer on the CPU, made without first duplicating it on its own
    device (a plain deepcopy would, beside the optimizer state). Tied parameters stay tied: they are one object."""
    memo = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        host = tensor.detach().to("cpu", copy=True)
        memo[id(tensor)] = torch.nn.Parameter(host, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) \
            else host
    return copy.deepcopy(model, memo)


def probe_outputs(model, probe: dict) -> torch.Tensor:
    """The model's main output on `probe` in eval mode, without autograd, in full fp32 and on CPU (as a user on CPU
    would get them).

    CPU is the reference device of every fingerprint: a model trained on a GPU is probed through a CPU copy, because
    GPU fp32 kernels sum in another order (a trained LTG-BERT's logits moved by 3e-4 on an H100), and a fingerprint
    must not depend on where the export was written. The copy leaves the training model and its optimizer alone.
    The class's own `forward` is called, not the instance's: `accelerate.prepare` (hence Trainer with bf16/fp16)
    replaces `model.forward` with one that enters autocast, which an outer `autocast(enabled=False)` cannot undo.
    """
    if next(model.parameters()).device.type != "cpu":
        model = cpu_copy(model)
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", enabled=False), full_fp32_matmuls():
        outputs = main_output(type(model).forward(model, **probe))
    model.train(was_training)
    return outputs.float()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_digest(outputs: torch.Tensor) -> torch.Tensor:
    """Every output feature, in a few numbers per position: the sums of PROBE_DIGEST_SLICES consecutive slices of the
    last dimension, each divided by the square root of its width.

    A change to any one feature moves its slice's number by that change over sqrt(width), while the rounding noise
    of another process (which may sum in another order) stays at the scale of one feature's, so the same tolerance
    applies as to the features themselves. Summed in float64, so the digest adds no rounding of its own."""
    slices = outputs.double().tensor_split(min(PROBE_DIGEST_SLICES, outputs.shape[-1]), dim=-1)
    return torch.stack([part.sum(-1) / part.shape[-1] ** 0.5 for part in slices], dim=-1)


def probe_inputs(config, tokenizer) -> tuple:
    """The probe batch (PROBE_TEXTS, padded) and, per text, what of it was probed.

    Texts are cut to the model's `max_position_embeddings` (a byte-level model with few positions cannot take the
    longer texts whole, and the model would refuse them); the record says for each text how many tokens it has and
    how many were probed, so the manifest never claims more than was checked."""
    limit = getattr(config, "max_position_embeddings", None)
    # Copies: calling a fast tokenizer with padding or truncation leaves them switched on in its backend, and a later
    # save of the same tokenizer (the next checkpoint's export) would then ship another tokenizer.json.
    whole = copy.deepcopy(tokenizer)(PROBE_TEXTS)["input_ids"]
    cut = {} if limit is None else {"truncation": True, "max_length": limit}
    probe = dict(copy.deepcopy(tokenizer)(PROBE_TEXTS, padding=True, return_tensors="pt", **cut))
    probed = probe["attention_mask"].sum(-1).tolist()
    return probe, [{"text": text, "tokens": len(ids), "probed_tokens": kept}
                   for text, ids, kept in zip(PROBE_TEXTS, whole, probed)]


def write_manifest(folder: Path, model, tokenizer) -> None:
    """Fingerprint the export: file hashes (the card may be edited later, so it is left out) and probe outputs (the
    first features exactly, all of them through their digest)."""
    probe, probed = probe_inputs(model.config, tokenizer)
    outputs = probe_outputs(model, probe)
    manifest = {
        "hubzoo_version": metadata.version("hubzoo"),
        "transformers_version": transformers.__version__,
        "device": "cpu",  # where the probe outputs were computed (see probe_outputs)
        "files": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.name != "README.md"},
        "probe_texts": probed,
        "probe": {key: value.tolist() for key, value in probe.items()},
        "probe_output_sample": outputs[..., :PROBE_SAMPLE_WIDTH].tolist(),
        "probe_output_digest": output_digest(outputs).tolist(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def check_export_target(out_dir, sources=()) -> Path:
    """Refuse, with a ValueError naming it, an `out_dir` that an export may not replace; return its absolute path.

    An export replaces only an empty folder or an earlier hubzoo export holding nothing beyond its own files, never a
    file, a symbolic link (whose target may be anyone's) or a folder that is or holds one of `sources` (the
    checkpoint or tokenizer being exported). Cheap and side-effect free: call it before training or converting."""
    target = Path(os.path.abspath(out_dir))
    target = target.parent.resolve() / target.name  # a symlink in the last component is judged, not followed
    for source in map(Path, sources):
        source = source.resolve()
        if source == target or target in source.parents:
            raise ValueError(f"{target} holds the source {source}: the export would delete it; choose another "
                             "output folder")
    if target.is_symlink():
        raise ValueError(f"{target} is a symbolic link: name the folder itself as the output")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} is a file, not a folder for an export")
    if target.is_dir():
        entries = sorted(target.iterdir())
        recorded = read_json_object(target / MANIFEST).get("files") if entries else {}
        if not isinstance(recorded, dict):
            raise ValueError(f"{target} is neither empty nor a hubzoo export (no readable {MANIFEST}): refusing to "
                             "replace it; choose an empty or new output folder")
        shipped = set(recorded) | {"README.md", MANIFEST}
        foreign = [p.name for p in entries if p.name not in shipped or p.is_symlink() or not p.is_file()]
        if foreign:
            raise ValueError(f"{target} is a hubzoo export but also holds {foreign}, which replacing it would "
                             "delete: move them away or choose another output folder")
    return target


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; empty if the file is missing, unreadable or holds anything else."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def export(model, tokenizer, out_dir, card: Optional[CardInfo] = None, run_verify: bool = True) -> Path:
    """Write `model` + `tokenizer` as a Hub-ready folder at `out_dir`. Returns its path.

    `out_dir` must be new, empty or an earlier export (see `check_export_target`). With `run_verify` (the default)
    the staged folder must pass `verify` against the in-memory model before it replaces `out_dir`; otherwise
    `VerificationError` is raised and `out_dir` is left as it was.
    """
    from hub_exports.verification import format_report, verify  # verification imports this module

    target = check_export_target(out_dir)
    problems = tokenizer_problems(model.config, tokenizer, type(model).__name__)
    if problems:
        raise ValueError(f"Tokenizer does not fit the model: {'; '.join(problems)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_killed_exports(target)
    staging = _make_staging(target)
    # Staged under the target's own name: it becomes part of the transformers_modules package path in verification.
    folder = staging / target.name
    try:
        folder.mkdir()
        model.config.auto_map = modeling.auto_map(model.config.model_type)  # every task class, not just this one
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _write_portable_tokenizer_config(folder / "tokenizer_config.json", model)
        build_model_card(model, card or CardInfo()).save(folder / "README.md")
        write_manifest(folder, model, tokenizer)
        if run_verify:
            logger.info("%s", format_report(target, verify(folder, reference_model=model)))
        check_export_target(target)  # again: the folder may have been changed while the export was written
        _move_into_place(folder, target)
    finally:
        _discard_staging(staging)
    return target


def _write_portable_tokenizer_config(tokenizer_config: Path, model) -> None:
    """Pin what transformers 4.x and 5.x would otherwise read differently from the same tokenizer files."""
    settings = json.loads(tokenizer_config.read_text())
    # 5.x calls a plain fast tokenizer `TokenizersBackend`, which 4.x cannot resolve; both know this name.
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    # 4.x fast tokenizers default to emitting token_type_ids, which the models' forward() does not take.
    settings["model_input_names"] = ["input_ids", "attention_mask"]
    # `truncation=True` should cut at the model's limit instead of tripping its length check.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and settings.get("model_max_length", float("inf")) > limit:
        settings["model_max_length"] = limit
    tokenizer_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def recover_killed_exports(out_dir) -> None:
    """Clean up after exports into `out_dir`'s parent that were killed: put back an earlier export that a kill left
    inside a staging folder (between the two renames of the fallback swap) and delete every staging folder of a dead
    export. Only folders provably ours are touched (see `_abandoned`)."""
    target = Path(os.path.abspath(out_dir))
    parent = target.parent
    for staging in sorted(parent.glob("staging_*")) if parent.is_dir() else ():
        if _abandoned(staging):
            logger.info("removing %s, left by an export that was killed", staging)
            _discard_staging(staging)
    _recover_old_swaps(target)


def _recover_old_swaps(target: Path) -> None:
    """hubzoo 0.1.0 swapped by renaming the old export to `<target>.old-<pid>` first; a kill there left no export at
    the target. Such a folder of a dead process that is a hubzoo export (a manifest, nothing beyond its files) is
    put back when the target is missing, and deleted (as that swap would have) when the target holds an export."""
    for old in sorted(target.parent.glob(f"{glob.escape(target.name)}.old-*")):
        pid = old.name.rpartition(".old-")[2]
        if not pid.isdigit() or _running(int(pid)) or old.is_symlink() or not (old / MANIFEST).is_file():
            continue
        try:
            check_export_target(old)
        except ValueError:
            continue
        if not os.path.lexists(target):
            if not _holds_every_recorded_file(old):  # its deletion was killed half-way: not an export to put back
                logger.warning("%s is an incomplete earlier export; left as it is", old)
                continue
            old.rename(target)
            logger.warning("put the earlier export back at %s (an older hubzoo was killed while replacing it)", target)
        elif (target / MANIFEST).is_file():
            logger.info("removing %s, an earlier export an older hubzoo's swap left behind", old)
            shutil.rmtree(old)


def _holds_every_recorded_file(folder: Path) -> bool:
    recorded = read_json_object(folder / MANIFEST).get("files")
    return isinstance(recorded, dict) and all((folder / name).is_file() for name in recorded)


def _make_staging(target: Path) -> Path:
    """A new staging folder next to `target`, marked as ours (by name and marker file) before anything goes in."""
    staging = target.with_name(f"staging_{target.name}_{os.getpid()}_{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        with open(staging / STAGING_MARKER, "x") as marker:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, marker)
    except BaseException:
        _discard_staging(staging)
        raise
    return staging


def _abandoned(folder: Path) -> bool:
    """A staging folder of a dead export on this host: our name, our marker (or nothing at all: killed before the
    marker was written), and no running process of its pid."""
    match = STAGING_NAME.fullmatch(folder.name)
    try:
        if not match or folder.is_symlink() or not folder.is_dir():
            return False
        if (folder / STAGING_MARKER).is_file():
            # An unreadable marker is one a kill interrupted while it was written, on this host.
            if read_json_object(folder / STAGING_MARKER).get("host", socket.gethostname()) != socket.gethostname():
                return False
        elif any(folder.iterdir()):
            return False
    except OSError:  # e.g. another user's folder: not ours to judge
        return False
    return not _running(int(match["pid"]))


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there; never judge a folder abandoned
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _discard_staging(staging: Path) -> None:
    """Delete a staging folder of ours, after putting back an earlier export that the fallback swap had moved into
    it if the target is still missing (killed between its renames). The marker goes last, so that a folder half
    deleted by a kill is still recognisably ours. A failure is logged: the next export retries."""
    target = staging.parent / STAGING_NAME.fullmatch(staging.name)["target"]
    previous = staging / f"{target.name}.previous"
    try:
        if previous.is_dir() and not os.path.lexists(target):
            previous.rename(target)
            logger.warning("put the earlier export back at %s (an export was killed while replacing it)", target)
        elif previous.is_dir() and not (target / MANIFEST).is_file():
            # Something other than an export took the target's place since: the earlier export is all there is.
            logger.warning("%s holds no export, so the earlier one is kept in %s", target, staging)
            return
        for entry in staging.iterdir():
            if entry.name != STAGING_MARKER:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (staging / STAGING_MARKER).unlink(missing_ok=True)
        staging.rmdir()
    except OSError as error:
        logger.warning("could not remove the staging folder %s (%s); the next export there retries", staging, error)


def _move_into_place(new: Path, target: Path) -> None:
    """Put the folder `new` (inside its staging folder) at `target`. An earlier export there is exchanged with it in
    one step where the system can; it then lies at `new` and goes with the staging folder. Elsewhere it is moved
    into the staging folder first: a kill before the second rename leaves it there for `_discard_staging` to put
    back, and a failed second rename puts it back at once."""
    if not os.path.lexists(target):
        new.rename(target)
    elif not _exchange(new, target):
        previous = new.with_name(f"{target.name}.previous")
        target.rename(previous)
        try:
            new.rename(target)
        except BaseException:
            previous.rename(target)
            raise


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically: Linux `renameat2(RENAME_EXCHANGE)`, macOS `renamex_np(RENAME_SWAP)`. False where
    the system or the filesystem offers no such swap."""
    libc = _libc()
    paths = (os.fsencode(first), os.fsencode(second))
    if hasattr(libc, "renameat2"):  # glibc >= 2.28
        at_fdcwd, rename_exchange = -100, 2
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        failed = libc.renameat2(at_fdcwd, paths[0], at_fdcwd, paths[1], rename_exchange)
    elif hasattr(libc, "renamex_np"):
        rename_swap = 2
        libc.renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        failed = libc.renamex_np(*paths, rename_swap)
    else:
        return False
    if not failed:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))
