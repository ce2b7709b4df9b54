"""Read a `torch.save` file that pickles objects of other libraries (a Lightning checkpoint's Hydra config, its
tokenizer) without running any of their code, and without ever turning torch's weights-only unpickler off.

Every global the file names that `torch.load(weights_only=True)` would refuse is allowed, for this one load, as a
`PickledObject` subclass named after it: an inert record that only keeps what the pickle hands it (the arguments of
REDUCE/NEWOBJ, the state of BUILD). No class or function of the file is imported or called; the only code that runs
is torch's weights-only unpickler and the records' constructors. A global stays refused where torch blocks its module
outright (`os`, `posix`, `sys`, ...), and an object whose items are pickled one by one (a dict or list subclass)
cannot be read, since that unpickler adds items to plain dicts and lists only; `collections.defaultdict` is therefore
read as the plain dict of its items (its default factory is code, and a record needs none).

Needs torch >= 2.6 (`safe_globals` with explicit `(object, "module.name")` pairs).
"""

import torch


class PickledObject:
    """What the pickle said about one object of a class that was not imported: `args` (REDUCE/NEWOBJ) and `state`
    (BUILD, i.e. `__setstate__` or the instance dict). The class attribute `global_name` is the pickled class's
    "module.Name"; the class itself stands for the global wherever the pickle names it without calling it."""

    global_name = ""

    def __new__(cls, *args):
        record = super().__new__(cls)
        record.args, record.state = args, None
        return record

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<pickled {self.global_name} object>"


class _RecordClass(type):
    """The type of the per-global record classes, so that a message about the class names the pickled global."""

    def __repr__(cls):
        return f"<pickled global {cls.global_name}>"


def _plain_dict(*_default_factory):
    return {}


# Globals read as the plain container that holds their pickled items (see the module docstring).
ITEM_CONTAINERS = {"collections.defaultdict": _plain_dict}


def record_class(global_name: str) -> type:
    """A fresh `PickledObject` subclass standing for the global "module.Name"."""
    class_name = global_name.rpartition(".")[2] or "Global"
    return _RecordClass(class_name, (PickledObject,), {"global_name": global_name, "__module__": __name__})


def is_record(value) -> bool:
    """Whether `value` is a record of an object or the record class of a global the pickle names."""
    return isinstance(value, PickledObject) or (isinstance(value, type) and issubclass(value, PickledObject))


def load_keeping_records(path):
    """`torch.load(path, weights_only=True)` with the globals it would refuse read as inert records (module
    docstring). Raises what torch.load raises for a damaged file or a blocked global."""
    stand_ins = [(ITEM_CONTAINERS.get(name) or record_class(name), name) for name in _refused_globals(path)]
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


def _refused_globals(path) -> list:
    """The globals of a zip-format `torch.save` file that torch does not allow; none for the legacy format (which
    torch.load then reads, or refuses, as usual)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError as error:
        if "Expected input to be a checkpoint" in str(error):
            return []
        raise


def records_in(value, where: str):
    """(where, record) for every record in plain containers below `value`, `where` being its path (e.g.
    "['state_dict']['x']"); records are not looked into."""
    seen = set()
    pending = [(value, where)]
    while pending:
        value, where = pending.pop()
        if is_record(value):
            yield where, value
        elif isinstance(value, (dict, list, tuple, set)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            pending.extend((item, f"{where}[{key!r}]") for key, item in items)
            if isinstance(value, dict):
                pending.extend((key, f"{where} key {key!r}") for key in value if is_record(key))
