"""A PEFT user's session on a hubzoo export, in a fresh interpreter (run by tests/test_peft.py).

`python -m tests.peft_driver spec.json`. Phase "train", per LoRA variant of the spec: load the export with
`trust_remote_code`, `get_peft_model`, check the untrained adapter leaves the outputs alone, a few optimizer steps on
the labelled batch (the loss must fall and the adapter must then change the outputs), `save_pretrained` the adapter with
the outputs it gives, `merge_and_unload` (same outputs, the exported class, the head still tied). Phase "reload", in a
new process: the adapter on a freshly loaded base gives the saved outputs, merged as well. Prints one JSON report:
variant -> "ok" or the failure.
"""

import copy
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from tests.client_process import failure, load_inputs, outputs_of, read_spec, report

STEPS = 3


def tolerance(reference: torch.Tensor) -> dict:
    """1e-5 of the outputs' own scale: a tiny random Backpack's logits are ~4e-3, a modded GPT's ~15."""
    return dict(atol=1e-5 * reference.abs().max().item(), rtol=1e-5)


def load_base(spec):
    return getattr(transformers, spec["auto_class"]).from_pretrained(spec["folder"], trust_remote_code=True)


def check_merged(merged, spec, inputs, expected, class_name):
    if type(merged).__name__ != class_name:
        raise AssertionError(f"merge_and_unload gave a {type(merged).__name__}, not the loaded {class_name}")
    if spec["tied"] and merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight:
        raise AssertionError("merge_and_unload untied the head")
    torch.testing.assert_close(outputs_of(merged, inputs), expected, **tolerance(expected),
                               msg="merged outputs differ")


def train(spec, variant, inputs, labels, work: Path):
    base = load_base(spec)
    class_name = type(base).__name__
    before = outputs_of(base, inputs)
    # Copies: PEFT's task wrappers extend `modules_to_save` in place with their own default head names.
    settings = {key: copy.copy(variant[key]) for key in ("target_modules", "task_type", "modules_to_save")
                if variant.get(key)}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **settings))
    adapted = [name for name, _ in model.named_modules() if name.endswith(".lora_A")]
    if not adapted:
        raise AssertionError(f"no LoRA layer inserted for {settings}")
    if variant.get("expect_in_names"):
        missed = [name for name in adapted if not any(f".{part}." in name for part in variant["target_modules"])]
        if missed:
            raise AssertionError(f"LoRA on modules not asked for: {missed}")
    torch.testing.assert_close(outputs_of(model, inputs), before, **tolerance(before),
                               msg="an untrained adapter (lora_B = 0) changed the outputs")
    model.eval()  # dropout off: the losses before and after the steps are of the same function
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-2, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(**inputs, labels=labels).loss.item())
    if not losses[-1] < losses[0]:
        raise AssertionError(f"{STEPS} steps did not lower the loss: {losses}")
    trained = outputs_of(model, inputs)
    change = (trained - before).abs().max().item()
    if change < 10 * tolerance(before)["atol"]:  # else the equalities below would hold for any adapter
        raise AssertionError(f"the trained adapter hardly changes the outputs: by {change:.3g}")
    model.save_pretrained(work / variant["name"])
    saved = load_file(work / variant["name"] / "adapter_model.safetensors")
    unsaved = [name for name in variant.get("modules_to_save") or () if not any(f".{name}." in key for key in saved)]
    if unsaved:
        raise AssertionError(f"modules_to_save {unsaved} are not in the saved adapter: {sorted(saved)}")
    save_file({"outputs": trained}, work / f"{variant['name']}-outputs.safetensors")
    check_merged(model.merge_and_unload(), spec, inputs, trained, class_name)
    return "ok"


def reload(spec, variant, inputs, work: Path):
    expected = load_file(work / f"{variant['name']}-outputs.safetensors")["outputs"]
    base = load_base(spec)
    class_name = type(base).__name__
    model = PeftModel.from_pretrained(base, work / variant["name"])
    torch.testing.assert_close(outputs_of(model, inputs), expected, **tolerance(expected),
                               msg="the adapter reloaded on a fresh base gives other outputs")
    check_merged(model.merge_and_unload(), spec, inputs, expected, class_name)
    return "ok"


def main():
    spec = read_spec()
    inputs, labels = load_inputs(spec["inputs"])
    work = Path(spec["work"])
    results = {}
    for variant in spec["variants"]:
        torch.manual_seed(0)
        try:
            if spec["phase"] == "train":
                results[variant["name"]] = train(spec, variant, inputs, labels, work)
            else:
                results[variant["name"]] = reload(spec, variant, inputs, work)
        except Exception:  # one variant's failure is reported, the others still run
            results[variant["name"]] = failure()
    report(results)


if __name__ == "__main__":
    main()
