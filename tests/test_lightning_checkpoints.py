"""The originals' Lightning checkpoints as their training code writes them: `hyper_parameters` holds the Hydra config
as an omegaconf DictConfig (with interpolations) and the tokenizer object. They convert, with the fixtures' parity,
without any pickled code running (hub_exports.inert_pickle, hub_exports.omegaconf_records); a pickle that would run
code never runs, and converts or is refused with a clear ConversionError."""

import builtins
import collections
import copy
import os
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from hub_exports.convert_diffusion import convert_diffusion
from hub_exports.inert_pickle import PickledObject, load_keeping_records
from hub_exports.omegaconf_records import Unresolved, plain_config
from hub_exports.strict_mapping import ConversionError
from tests.modeling_common import tiny_tokenizer

try:
    from omegaconf import OmegaConf
except ImportError:  # the stand-in classes below still exercise the pickled layout
    OmegaConf = None

MASK = 127
LOGITS = dict(atol=5e-5, rtol=1e-5)
CHECKPOINTS = {"mdlm": "mdlm/lightning/mdlm_tiny.ckpt", "bd3lm": "bd3lm/lightning/bd3lm_tiny_bs4.ckpt"}
CONFIG_KINDS = ["stand-in"] + (["omegaconf"] if OmegaConf is not None else [])


def with_interpolations(config: dict) -> dict:
    """The same config written as Hydra configs are: a needed field as a reference (absolute and relative), and the
    original's resolver and string interpolations in fields the converter does not read."""
    config = copy.deepcopy(config)
    assert config["model"]["cond_dim"] == config["model"]["length"] == 32
    config["model"]["cond_dim"] = "${model.length}"
    config["model"]["n_heads"] = "${..heads}"
    config["heads"] = 4
    config["loader"]["batch_size"] = "${div_up:${.global_batch_size}, ${eval:${trainer.devices} * 1}}"
    config["wandb"]["id"] = "${.name}_${seed}"
    config["eval"]["checkpoint_path"] = "???"
    return config


# Stand-ins that pickle exactly as omegaconf's classes do (instance dict {_metadata, _parent, _content | _val}),
# under omegaconf's module paths; the modules exist only while the checkpoint is written.
class DictConfig:
    pass


class ListConfig:
    pass


class AnyNode:
    pass


class ContainerMetadata:
    pass


STAND_INS = {"omegaconf.dictconfig": [DictConfig], "omegaconf.listconfig": [ListConfig],
             "omegaconf.nodes": [AnyNode], "omegaconf.base": [ContainerMetadata]}


def stand_in_config(value, parent=None, key=None):
    if isinstance(value, (dict, list)):
        node = (DictConfig if isinstance(value, dict) else ListConfig)()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        content = {name: stand_in_config(item, node, name) for name, item in items}
        node.__dict__.update(_metadata=_metadata(key), _parent=parent,
                             _content=content if isinstance(value, dict) else list(content.values()))
        return node
    node = AnyNode()
    node.__dict__.update(_metadata=_metadata(key), _parent=parent, _val=value)
    return node


def _metadata(key):
    metadata = ContainerMetadata()
    metadata.__dict__.update(ref_type=object, object_type=None, optional=True, key=key, flags={})
    return metadata


def save_with_stand_ins(checkpoint: dict, path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        for module_name, classes in STAND_INS.items():
            module = types.ModuleType(module_name)
            for cls in classes:
                cls.__module__ = module_name
                setattr(module, cls.__name__, cls)
            patch.setitem(sys.modules, module_name, module)
        torch.save(checkpoint, path)
    for cls in (cls for classes in STAND_INS.values() for cls in classes):
        cls.__module__ = __name__


def as_original(shared_dir, tmp_path, monkeypatch, name, kind, **extra):
    """The fixture checkpoint re-saved as the original writes it: the config as a DictConfig (`kind`), the tokenizer
    object beside it in hyper_parameters; `extra` entries are added to hyper_parameters (or, for key "top_level",
    to the checkpoint itself)."""
    checkpoint = torch.load(shared_dir / "fixtures" / CHECKPOINTS[name], weights_only=True)
    config = with_interpolations(checkpoint["hyper_parameters"]["config"])
    top_level = extra.pop("top_level", {})
    hyper_parameters = {"tokenizer": tiny_tokenizer(127, specials=("[PAD]", "[UNK]", "[CLS]", "[SEP]")), **extra}
    path = tmp_path / f"{name}_{kind}.ckpt"
    if kind == "omegaconf":
        checkpoint.update(hyper_parameters={"config": OmegaConf.create(config), **hyper_parameters}, **top_level)
        torch.save(checkpoint, path)
    else:
        checkpoint.update(hyper_parameters={"config": stand_in_config(config), **hyper_parameters}, **top_level)
        save_with_stand_ins(checkpoint, path, monkeypatch)
    return path


def golden_logits(shared_dir, name, model):
    io = load_file(shared_dir / "fixtures" / name / "io.safetensors")
    with torch.no_grad():
        if name == "mdlm":
            return model(input_ids=io["xt"]).logits, io["logits"]
        return model(input_ids=io["train_xt"], clean_ids=io["x0"]).logits, io["train_logits"]


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize("name", CHECKPOINTS)
def test_an_original_checkpoint_converts_with_the_fixture_parity(shared_dir, tmp_path, monkeypatch, name, kind):
    source = as_original(shared_dir, tmp_path, monkeypatch, name, kind)
    assert "omegaconf.dictconfig.DictConfig" in torch.serialization.get_unsafe_globals_in_checkpoint(source)
    with pytest.raises(Exception, match="GLOBAL"):  # what the plain weights-only load refuses
        torch.load(source, weights_only=True)
    plain = convert_diffusion(shared_dir / "fixtures" / CHECKPOINTS[name], mask_token_id=MASK)
    for weights in ("ema", "live"):
        model = convert_diffusion(source, mask_token_id=MASK, weights=weights)
        reference = convert_diffusion(shared_dir / "fixtures" / CHECKPOINTS[name], mask_token_id=MASK, weights=weights)
        assert model.config.to_dict() == reference.config.to_dict()
        for (key, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
            assert torch.equal(ours, theirs), key
    assert model.config.cond_dim == 32 and model.config.num_attention_heads == 4  # the interpolated fields
    ours, golden = golden_logits(shared_dir, name, convert_diffusion(source, mask_token_id=MASK))
    torch.testing.assert_close(ours, golden, **LOGITS)
    assert plain.config.to_dict() == convert_diffusion(source, mask_token_id=MASK).config.to_dict()


@pytest.mark.parametrize("value, says", [("${eval:32}", "calls a resolver"), ("???", "missing value"),
                                         ("${model.nowhere}", "does not have"), ("${model.length}", "back to itself")])
def test_a_needed_field_that_does_not_resolve_is_named(shared_dir, tmp_path, monkeypatch, value, says):
    checkpoint = torch.load(shared_dir / "fixtures" / CHECKPOINTS["mdlm"], weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["length"] = value
    path = tmp_path / "unresolved.ckpt"
    checkpoint["hyper_parameters"]["config"] = stand_in_config(checkpoint["hyper_parameters"]["config"])
    save_with_stand_ins(checkpoint, path, monkeypatch)
    with pytest.raises(ConversionError, match=rf"hyper_parameters\.config\.model\.length is .*{says}"):
        convert_diffusion(path, mask_token_id=MASK)


class RunsACommand:
    """A pickle gadget: unpickling it the ordinary way calls `call(*args)`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def gadgets(marker) -> dict:
    """Each would create `marker` if its pickle were run."""
    return {"os.system": RunsACommand(os.system, f"touch {marker}"),
            "subprocess.run": RunsACommand(subprocess.run, ["touch", str(marker)]),
            "builtins.exec": RunsACommand(builtins.exec, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("gadget", ["os.system", "subprocess.run", "builtins.exec"])
@pytest.mark.parametrize("kind", CONFIG_KINDS)
def test_a_gadget_beside_the_config_never_runs(shared_dir, tmp_path, monkeypatch, kind, gadget):
    """In an unused hyper_parameters entry a gadget is an inert record and the checkpoint converts; one whose module
    torch blocks outright (os.system pickles as posix.system) is refused, naming it."""
    marker = tmp_path / "ran"
    source = as_original(shared_dir, tmp_path, monkeypatch, "mdlm", kind, payload=gadgets(marker)[gadget])
    if gadget == "os.system":
        with pytest.raises(ConversionError, match=r"refused for safety.*the global posix\.system.*never unpickles"):
            convert_diffusion(source, mask_token_id=MASK)
    else:
        ours, golden = golden_logits(shared_dir, "mdlm", convert_diffusion(source, mask_token_id=MASK))
        torch.testing.assert_close(ours, golden, **LOGITS)
    assert not marker.exists()


@pytest.mark.parametrize("gadget", ["os.system", "subprocess.run", "builtins.exec"])
def test_a_gadget_outside_hyper_parameters_is_refused_and_never_runs(shared_dir, tmp_path, monkeypatch, gadget):
    marker = tmp_path / "ran"
    source = as_original(shared_dir, tmp_path, monkeypatch, "mdlm", CONFIG_KINDS[-1],
                         top_level={"payload": gadgets(marker)[gadget]})
    with pytest.raises(ConversionError, match=r"refused for safety.*global (posix\.system|commands\.run|"
                                              r"subprocess\.run|builtins\.exec)") as refused:
        convert_diffusion(source, mask_token_id=MASK)
    assert "weights_only" not in str(refused.value) and not marker.exists()


def test_a_gadget_where_the_config_belongs_is_named_with_the_field(shared_dir, tmp_path):
    marker = tmp_path / "ran"
    checkpoint = torch.load(shared_dir / "fixtures" / CHECKPOINTS["mdlm"], weights_only=True)
    checkpoint["hyper_parameters"]["config"] = gadgets(marker)["builtins.exec"]
    torch.save(checkpoint, tmp_path / "gadget.ckpt")
    with pytest.raises(ConversionError, match=r"hyper_parameters\.config .*a pickled builtins\.exec object"):
        convert_diffusion(tmp_path / "gadget.ckpt", mask_token_id=MASK)
    assert not marker.exists()


class Recorded:
    def __init__(self, size):
        self.size, self.parts = size, ["a", ("b", 2)]


def test_records_keep_what_the_pickle_says_and_import_nothing(tmp_path, monkeypatch):
    module = types.ModuleType("hubzoo_unimportable_module")
    with monkeypatch.context() as patch:
        Recorded.__module__ = module.__name__
        module.Recorded = Recorded
        patch.setitem(sys.modules, module.__name__, module)
        torch.save({"object": Recorded(3), "class": Recorded, "weights": torch.ones(2)}, tmp_path / "records.pt")
    Recorded.__module__ = __name__
    loaded = load_keeping_records(tmp_path / "records.pt")
    assert module.__name__ not in sys.modules  # nothing was imported
    record = loaded["object"]
    assert isinstance(record, PickledObject) and record.global_name == "hubzoo_unimportable_module.Recorded"
    assert record.args == () and record.state == {"size": 3, "parts": ["a", ("b", 2)]}
    assert issubclass(loaded["class"], PickledObject) and loaded["class"].global_name == record.global_name
    assert torch.equal(loaded["weights"], torch.ones(2))


@pytest.mark.skipif(OmegaConf is None, reason="needs omegaconf to write a real DictConfig")
def test_omegaconf_values_and_interpolations_come_back_as_omegaconf_resolves_them(tmp_path):
    config = {"model": {"length": 32, "same": "${.length}", "up": "${..seed}", "items": [1, "${model.length}"],
                        "flag": True, "rate": 0.5, "none": None},
              "seed": 7, "name": "run_${seed}_${model.rate}", "whole": "${model.items}", "index": "${model.items[1]}"}
    torch.save({"config": OmegaConf.create(config)}, tmp_path / "config.pt")
    plain = plain_config(load_keeping_records(tmp_path / "config.pt"))["config"]
    assert plain == OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    unresolved = {"calls": "${oc.env:HOME}", "cycle": "${cycle}", "missing": "???", "text": "x_${nowhere}"}
    torch.save({"config": OmegaConf.create(unresolved)}, tmp_path / "unresolved.pt")
    plain = plain_config(load_keeping_records(tmp_path / "unresolved.pt"))["config"]
    assert all(isinstance(value, Unresolved) for value in plain.values())
    assert [plain[key].text for key in unresolved] == list(unresolved.values())


class ItemsDict(dict):
    """A dict subclass: its pickle adds the items one by one, which the weights-only unpickler does to plain dicts
    only."""


def test_pickled_items_are_kept_in_a_defaultdict_and_a_dict_subclass_is_refused(shared_dir, tmp_path):
    checkpoint = torch.load(shared_dir / "fixtures" / CHECKPOINTS["mdlm"], weights_only=True)
    checkpoint["hyper_parameters"]["cache"] = collections.defaultdict(list, {"now": ["2024.05.01"]})
    torch.save(checkpoint, tmp_path / "defaultdict.ckpt")
    assert load_keeping_records(tmp_path / "defaultdict.ckpt")["hyper_parameters"]["cache"] == {"now": ["2024.05.01"]}
    convert_diffusion(tmp_path / "defaultdict.ckpt", mask_token_id=MASK)
    checkpoint["hyper_parameters"]["cache"] = ItemsDict(now=1)
    torch.save(checkpoint, tmp_path / "subclass.ckpt")
    with pytest.raises(ConversionError, match=r"refused for safety.*ItemsDict.*never unpickles code"):
        convert_diffusion(tmp_path / "subclass.ckpt", mask_token_id=MASK)
