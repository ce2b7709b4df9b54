"""The fingerprint of an export, `hubzoo_export.json` (MANIFEST): the sha256 of every file but the card, the probe
batch (PROBE_TEXTS, tokenized) and the outputs the exported model gave on it, the first PROBE_SAMPLE_WIDTH features
exactly and all of them through their digest (`output_digest`). Probe outputs are computed in full fp32 on the CPU,
the reference device of every fingerprint (`probe_outputs`).
"""

import copy
import hashlib
import itertools
import json
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
import transformers

from hub_exports.precision import full_fp32_matmuls

MANIFEST = "hubzoo_export.json"
PROBE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world", "A third, somewhat longer probe text."]
PROBE_SAMPLE_WIDTH = 16  # output features per position kept in the manifest (keeps it small for any vocab size)
PROBE_DIGEST_SLICES = 64  # slices of all output features per position summed in the manifest (see output_digest)


def main_output(outputs) -> torch.Tensor:
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


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


def write_manifest(folder: Path, model, tokenizer, extra: Optional[dict] = None) -> None:
    """Fingerprint the export: file hashes (the card may be edited later, so it is left out) and probe outputs (the
    first features exactly, all of them through their digest); `extra`: further entries (an adapter's base)."""
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
        **(extra or {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest(folder) -> dict:
    """The manifest of the export in `folder`; empty if it has none that can be read."""
    return read_json_object(Path(folder) / MANIFEST)


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; empty if the file is missing, unreadable or holds anything else."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
