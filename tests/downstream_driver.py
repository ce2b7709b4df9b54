"""A downstream user's round trip with a hubzoo export, in fresh interpreters (run by tests/test_downstream.py).

`python -m tests.downstream_driver spec.json`. Phase "save": load the export with `trust_remote_code`, record its
outputs, `save_pretrained` it to the user's own folder. Phase "reload", a new process: load that folder with
`trust_remote_code` (the class from transformers_modules, empty loading info, no warning, the head tied, the
recorded outputs), then load it again with each of the spec's `from_pretrained` options (`dtype`, `device_map`,
`attn_implementation`): clean, tied, asked-for dtype and attention, outputs close to the float32 ones. Prints one JSON
report: step -> "ok", a refusal the class declares, or the failure.
"""

from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.client_process import collected_warnings, failure, load_inputs, outputs_of, read_spec, report

# bfloat16 keeps 8 bits of mantissa: through a few layers outputs move by a few percent of their scale.
BF16_TOLERANCE = 0.1


def load(spec, folder, **options):
    with collected_warnings() as messages:
        model, info = getattr(transformers, spec["auto_class"]).from_pretrained(
            folder, trust_remote_code=True, output_loading_info=True, **options)
    problems = []
    if not type(model).__module__.startswith("transformers_modules"):
        problems.append(f"class from {type(model).__module__}, not the exported code")
    loading_info = {key: sorted(map(str, value)) for key, value in info.items() if value}
    if loading_info:
        problems.append(f"loading info not empty: {loading_info}")
    if messages:
        problems.append(f"warnings while loading: {messages}")
    if spec["tied"] and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        problems.append("head not tied to the input embedding")
    if problems:
        raise AssertionError("; ".join(problems))
    return model


def save(spec, inputs, work: Path):
    model = load(spec, spec["folder"])
    save_file({"outputs": outputs_of(model, inputs)}, work / "outputs.safetensors")
    with collected_warnings() as messages:
        model.save_pretrained(work / "user_copy")
    if messages:
        raise AssertionError(f"warnings while saving: {messages}")
    shipped = sorted(path.name for path in (work / "user_copy").glob("*.py"))
    if not shipped:
        raise AssertionError("save_pretrained wrote no modeling code: the copy cannot load with trust_remote_code")
    return "ok"


def reload(spec, inputs, expected, work: Path):
    model = load(spec, work / "user_copy")
    scale = expected.abs().max().item()
    torch.testing.assert_close(outputs_of(model, inputs), expected, atol=1e-5 * scale, rtol=1e-5,
                               msg="the user's saved copy gives other outputs than the export")
    return "ok"


def with_options(spec, inputs, expected, work: Path, options: dict):
    asked = dict(options)
    if "dtype" in asked:
        asked["dtype"] = getattr(torch, asked["dtype"])
    try:
        model = load(spec, work / "user_copy", **asked)
    except ValueError as error:
        implementation = options.get("attn_implementation")
        declared = getattr(transformers, spec["auto_class"]).from_pretrained(
            work / "user_copy", trust_remote_code=True)
        if implementation == "sdpa" and not getattr(declared, "_supports_sdpa", False):
            return f"refused (the class declares no sdpa support): {error}"
        raise
    problems = []
    if "dtype" in options:
        wrong = sorted({str(p.dtype) for p in model.parameters()} - {str(asked["dtype"])})
        if wrong:
            problems.append(f"parameters in {wrong}, asked for {asked['dtype']}")
    if "attn_implementation" in options and model.config._attn_implementation != options["attn_implementation"]:
        problems.append(f"config._attn_implementation is {model.config._attn_implementation!r}")
    if "device_map" in options and {p.device.type for p in model.parameters()} != {"cpu"}:
        problems.append(f"parameters on {sorted({str(p.device) for p in model.parameters()})}")
    if problems:
        raise AssertionError("; ".join(problems))
    tolerance = BF16_TOLERANCE if options.get("dtype") == "bfloat16" else 1e-5
    scale = expected.abs().max().item()
    torch.testing.assert_close(outputs_of(model, inputs), expected, atol=tolerance * scale, rtol=tolerance,
                               msg=f"outputs with {options} differ from the float32 ones")
    return "ok"


def main():
    spec = read_spec()
    inputs, _ = load_inputs(spec["inputs"])
    work = Path(spec["work"])
    if spec["phase"] == "save":
        try:
            report({"save": save(spec, inputs, work)})
        except Exception:
            report({"save": failure()})
        return
    expected = load_file(work / "outputs.safetensors")["outputs"]
    results = {}
    try:
        results["reload"] = reload(spec, inputs, expected, work)
    except Exception:
        results["reload"] = failure()
    for options in spec["options"]:
        try:
            results[str(options)] = with_options(spec, inputs, expected, work, options)
        except Exception:
            results[str(options)] = failure()
    report(results)


if __name__ == "__main__":
    main()
