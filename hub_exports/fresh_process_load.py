"""Load an exported folder the way a Hub user does, in an interpreter that never imported hubzoo.

Run by `hub_exports.verify` as `python -I fresh_process_load.py <folder> <auto class> <inputs.safetensors>
<outputs.safetensors> <new tokens> [<adapter folder> [<from_pretrained kwargs as JSON>]]` with `HF_HUB_OFFLINE=1`, a
private `HF_MODULES_CACHE` and a scratch working directory. Imports only the standard library, torch, safetensors and
transformers (and peft for an adapter), so it also runs under other transformers versions (the 4.57 compatibility
check uses it). Prints one JSON report on the last line of stdout.

With an adapter folder, the base `<folder>` is loaded as above and the adapter put on it with
`PeftModel.from_pretrained`, inside the same watch for warnings; the outputs are the adapted model's. A causal-LM
adapter is also loaded in one call, `AutoPeftModelForCausalLM.from_pretrained`, from a copy whose config names the
base `<folder>` (a Hub id cannot be fetched here), and the largest difference of its outputs from the first load is
reported. The kwargs (e.g. `num_labels` and the label
names of a classification adapter over a language-model export) go to the base's `from_pretrained`.

A model that can generate also generates greedily from `generate_prompt` in the inputs file, with and without its
cache: a user's first call after loading a causal LM. Its failure is reported (not raised), so that verify can name
it beside the load.
"""

import json
import logging
import sys
import warnings

import torch
import transformers
from safetensors.torch import load_file, save_file


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def main(folder, auto_class_name, inputs_path, outputs_path, new_tokens="0", adapter=None, load_kwargs="{}"):
    new_tokens, load_kwargs = int(new_tokens), json.loads(load_kwargs)
    transformers.logging.set_verbosity_warning()
    collector = _Collect()
    logging.getLogger("transformers").addHandler(collector)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto_class = getattr(transformers, auto_class_name)
        model, info = auto_class.from_pretrained(folder, trust_remote_code=True, output_loading_info=True,
                                                 **load_kwargs)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model.eval()
        inputs = load_file(inputs_path)
        prompt = inputs.pop("generate_prompt", None)
        with torch.no_grad():
            outputs = model(**inputs)
            # The tokenizer's own output must be accepted as-is; `truncation=True` cuts at its model_max_length,
            # which export sets to the model's max_position_embeddings.
            tokenized = tokenizer(["A short sentence.", "Another one, a little longer."], padding=True,
                                  truncation=True, return_tensors="pt")
            model(**tokenized)
    logging.getLogger("transformers").removeHandler(collector)  # generation reports its own warnings
    main_output = _main_output(outputs)
    save_file({"outputs": main_output.float().contiguous()}, outputs_path)
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    base = model.get_base_model() if adapter else model
    report = {
        "transformers_version": transformers.__version__,
        "class_module": type(base).__module__,
        "class_name": type(base).__name__,
        "loading_info": {key: sorted(map(str, value)) for key, value in info.items() if value},
        "warnings": collector.messages + [f"{w.category.__name__}: {w.message}" for w in caught],
        "tied": None if output_embeddings is None
        else output_embeddings.weight.data_ptr() == input_embeddings.weight.data_ptr(),
        "tokenizer_max_id": int(tokenized["input_ids"].max()),
        "can_generate": model.can_generate(),
        "generate": None if prompt is None or not model.can_generate() else _generate(model, prompt, new_tokens),
        "auto_peft": _auto_peft(adapter, folder, inputs, main_output)
        if adapter and auto_class_name == "AutoModelForCausalLM" else None,
    }
    print(json.dumps(report))


def _main_output(outputs):
    return outputs.logits if getattr(outputs, "logits", None) is not None else outputs.last_hidden_state


def _auto_peft(adapter, base, inputs, expected):
    """The adapter loaded in one call by PEFT's Auto class, from a copy whose config names the local `base` (what a
    user with the Hub gets from the id): the largest output difference from the two-step load, or why it could not
    be loaded."""
    import os
    import shutil
    import tempfile

    from peft import AutoPeftModelForCausalLM

    try:
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings(record=True) as caught, \
                torch.no_grad():
            copy = shutil.copytree(adapter, os.path.join(scratch, "adapter"))
            config_file = os.path.join(copy, "adapter_config.json")
            with open(config_file) as handle:
                config = json.load(handle)
            config["base_model_name_or_path"] = base
            with open(config_file, "w") as handle:
                json.dump(config, handle)
            warnings.simplefilter("always")
            model = AutoPeftModelForCausalLM.from_pretrained(copy, trust_remote_code=True).eval()
            outputs = _main_output(model(**inputs)).float()
    except Exception as error:  # reported to verify, which names it as the finding
        return {"error": f"{type(error).__name__}: {error}"[-2000:]}
    return {"max_diff": (outputs - expected.float()).abs().max().item(),
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


def _generate(model, prompt, new_tokens):
    """Greedy generation of `new_tokens` tokens after `prompt` (1, length), with the model's cache and without:
    the token ids of both, or the error that stopped it, and the warnings it raised."""
    collector = _Collect()
    logging.getLogger("transformers").addHandler(collector)
    settings = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, do_sample=False)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            cached = model.generate(prompt, use_cache=True, **settings)
            uncached = model.generate(prompt, use_cache=False, **settings)
    except Exception as error:  # reported to verify, which names it as the finding
        return {"error": f"{type(error).__name__}: {error}"[-2000:]}
    finally:
        logging.getLogger("transformers").removeHandler(collector)
    return {"prompt": prompt.tolist(), "cached": cached.tolist(), "uncached": uncached.tolist(),
            "warnings": collector.messages + [f"{w.category.__name__}: {w.message}" for w in caught]}


if __name__ == "__main__":
    main(*sys.argv[1:8])
