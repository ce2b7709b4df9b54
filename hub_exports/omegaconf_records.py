"""An omegaconf config (what Hydra hands a training script, and Lightning pickles into a checkpoint's
hyper_parameters) read as inert records (`hub_exports.inert_pickle`), turned back into plain dicts and lists.

omegaconf pickles a container (`DictConfig`, `ListConfig`) as its instance dict {"_metadata", "_parent",
"_content"}: `_content` is a dict or list of child nodes, or None, "???" (a missing value) or an interpolation
string. A value node (`AnyNode`, `StringNode`, `IntegerNode`, `FloatNode`, `BooleanNode`, `BytesNode`, ...) keeps its
value in `_val`; a `UnionNode` keeps its value node in `_content`. Interpolations that only reference other values
(`${model.length}`, `${.sibling}`, `${..uncle}`, `run_${seed}`) are resolved as omegaconf would; those that call a
resolver (`${eval:...}`, `${cwd:}`, `${oc.env:...}`) would run code and are not. What cannot be given as plain Python
becomes an `Unresolved` value; a node's value of another class (an Enum member, a path) stays a record.
"""

import re

from hub_exports.inert_pickle import PickledObject

CONTAINERS = {"omegaconf.dictconfig.DictConfig": dict, "omegaconf.listconfig.ListConfig": list}
VALUE_NODES = re.compile(r"omegaconf\.nodes\.\w+Node|omegaconf\.base\.UnionNode")
MISSING = "???"
# One reference: leading dots (relative), then keys separated by dots or given as [index]; no resolver (no colon).
REFERENCE = re.compile(r"\$\{(?P<dots>\.*)(?P<path>[^${}:.\[\]\s\\][^${}:\s\\]*)\}")


class Unresolved:
    """A config value that has no plain Python form here: `text` is what the config holds, `reason` why."""

    def __init__(self, text: str, reason: str):
        self.text, self.reason = text, reason

    def __repr__(self):
        return f"<unresolved {self.text!r}: {self.reason}>"


class _Interpolation:
    """An interpolation string before resolution."""

    def __init__(self, text: str):
        self.text = text


def plain_config(value):
    """`value` with every omegaconf container record in it turned into dicts and lists of plain values, each
    container reached from plain data being the root its interpolations are resolved against."""
    if isinstance(value, PickledObject) and value.global_name in CONTAINERS:
        return _Resolver(_plain_tree(value)).resolved((), frozenset())
    if isinstance(value, dict):
        return {key: plain_config(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_config(item) for item in value)
    return value


def _plain_tree(value):
    """Records of omegaconf containers and nodes -> dicts, lists and values, interpolations still unresolved."""
    if not isinstance(value, PickledObject):
        return _plain_value(value)
    state = value.state if isinstance(value.state, dict) else {}
    if value.global_name in CONTAINERS and "_content" in state:
        content = state["_content"]
        if isinstance(content, dict):
            return {key: _plain_tree(node) for key, node in content.items()}
        if isinstance(content, list):
            return [_plain_tree(node) for node in content]
        return _plain_value(content)
    if VALUE_NODES.fullmatch(value.global_name) and ("_val" in state or "_content" in state):
        return _plain_tree(state["_val"] if "_val" in state else state["_content"])
    return value


def _plain_value(value):
    if not isinstance(value, str):
        return value
    if value == MISSING:
        return Unresolved(MISSING, "is a missing value (???)")
    return _Interpolation(value) if "${" in value else value


class _Resolver:
    """Resolves the interpolations of one config tree against its root, following references (and references of
    references) and refusing cycles."""

    def __init__(self, root):
        self.root = root

    def resolved(self, path: tuple, chain: frozenset):
        value = self._at(path)
        if isinstance(value, _Interpolation):
            return self._interpolation(value.text, path, chain)
        if isinstance(value, dict):
            return {key: self.resolved(path + (key,), chain) for key in value}
        if isinstance(value, list):
            return [self.resolved(path + (index,), chain) for index in range(len(value))]
        return value

    def _interpolation(self, text: str, path: tuple, chain: frozenset):
        if path in chain:
            return Unresolved(text, "refers back to itself")
        chain = chain | {path}
        whole = REFERENCE.fullmatch(text)
        if whole:
            return self._reference(whole, path, chain)
        if "${" in REFERENCE.sub("", text):
            return Unresolved(text, "calls a resolver (code, which is not run here) or is not a plain reference")
        pieces, position = [], 0
        for match in REFERENCE.finditer(text):  # a string interpolation: each reference becomes text
            value = self._reference(match, path, chain)
            if isinstance(value, Unresolved):
                return Unresolved(text, f"needs {value.text}, which {value.reason}")
            pieces += [text[position:match.start()], str(value)]
            position = match.end()
        return "".join(pieces) + text[position:]

    def _reference(self, match, path: tuple, chain: frozenset):
        target = _target(match, path)
        if target is None or self._at(target) is _ABSENT:
            return Unresolved(match.group(0), "refers to a value the config does not have")
        return self.resolved(target, chain)

    def _at(self, path: tuple):
        value = self.root
        for key in path:
            if isinstance(value, list) and isinstance(key, str) and key.isdigit():
                key = int(key)
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
                value = value[key]
            else:
                return _ABSENT
        return value


_ABSENT = object()


def _target(match, path: tuple):
    """The path a reference names: absolute from the root, or (leading dots) from the container of the value at
    `path`, one level up per extra dot; None above the root."""
    keys = tuple(re.findall(r"[^.\[\]]+", match["path"]))
    dots = len(match["dots"])
    if dots == 0:
        return keys
    container = path[:-1]
    if dots - 1 > len(container):
        return None
    return container[:len(container) - (dots - 1)] + keys
