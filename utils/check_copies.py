"""Checks that code marked as a copy still equals its original, as transformers' `utils/check_copies.py` does.

Each exported modeling folder (`modeling/<type>/modeling_<type>.py`, `configuration_<type>.py`) must stand alone, so
code shared by architectures is copied between them. A marker on the line right above the copy names the original:

    # Copied from modeling.mdlm.modeling_mdlm.MdlmModel.__init__ with Mdlm->Bd3lm
    def __init__(self, config: Bd3lmConfig):        <- a class or def at any depth (its decorators first)

    # Copied from modeling.ltg_bert.configuration_ltg_bert[shared field checks]
    # ---- shared field checks (begin) ...         <- a section: from this line through
    # ---- shared field checks (end) ----          <- its end line, for code that is not one object

The copy must equal the original after the renames `A->B` (plain replacements, in order, separated by commas; `A->B
all-casing` also replaces lower(A) and upper(A)), re-indented to the copy's depth. Only the original the marker names
counts: a copy of a copy is compared with the copy it names, whose own marker is checked in turn.

    python -m utils.check_copies                      # report every drifted copy, exit 1 if any
    python -m utils.check_copies --fix_and_overwrite  # rewrite the copies from their originals
"""

import argparse
import ast
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
CHECKED_FOLDERS = ("modeling",)  # the exported files: elsewhere shared code is imported, not copied
MARKER = re.compile(r"^\s*# Copied from (?P<source>[\w.]+)(?:\[(?P<section>[^\]]+)\])?(?: with (?P<renames>.+?))?\s*$")
RENAME = re.compile(r"^\s*(\S+)->(\S+)(\s+all-casing)?\s*$")
DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
DIFF_LINES = 16
Span = Tuple[int, int]  # first and last line, 0-based, inclusive


class CopyError(Exception):
    """A marker whose original or copy cannot be found."""


@dataclass
class Marker:
    index: int  # 0-based line of the marker
    source: str  # the dotted path of the original: module, then class and def names
    section: Optional[str]
    renames: Optional[str]

    @property
    def original(self) -> str:
        return f"{self.source}[{self.section}]" if self.section else self.source


def parse_renames(text: Optional[str]) -> List[Tuple[str, str]]:
    renames = []
    for item in text.split(",") if text else []:
        match = RENAME.match(item)
        if match is None:
            raise CopyError(f"cannot read the rename {item.strip()!r}: write old->new, optionally with all-casing")
        old, new, all_casing = match.groups()
        renames.append((old, new))
        if all_casing:
            renames += [(old.lower(), new.lower()), (old.upper(), new.upper())]
    return renames


def find_markers(lines: List[str]) -> List[Marker]:
    matches = ((index, MARKER.match(line)) for index, line in enumerate(lines))
    return [Marker(index, match["source"], match["section"], match["renames"]) for index, match in matches if match]


def indent_of(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def node_span(node: ast.AST) -> Span:
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    return first - 1, node.end_lineno - 1


def object_span(tree: ast.Module, names: List[str], where: str) -> Span:
    """The lines of the object `names` (e.g. ["MdlmModel", "__init__"]), nested classes and defs."""
    body, node = tree.body, None
    for depth, name in enumerate(names):
        node = next((child for child in body if isinstance(child, DEFINITIONS) and child.name == name), None)
        if node is None:
            raise CopyError(f"no class or def {'.'.join(names[:depth + 1])} in {where}")
        body = node.body
    return node_span(node)


def section_span(lines: List[str], name: str, start: int, where: str) -> Span:
    """The lines of the section `name` opened at or after `start`: its begin line through its end line."""
    begin = next((i for i in range(start, len(lines)) if lines[i].strip().startswith(f"# ---- {name} (begin)")), None)
    if begin is None:
        raise CopyError(f"no section '# ---- {name} (begin)' in {where}")
    end = next((i for i in range(begin, len(lines)) if lines[i].strip().startswith(f"# ---- {name} (end)")), None)
    if end is None:
        raise CopyError(f"the section {name!r} in {where} has no line '# ---- {name} (end)'")
    return begin, end


def resolve_module(root: Path, dotted: str) -> Tuple[Path, List[str]]:
    """The file of the longest prefix of `dotted` that is a module under `root`, and the object path after it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        for path in (root.joinpath(*parts[:cut]).with_suffix(".py"), root.joinpath(*parts[:cut], "__init__.py")):
            if path.is_file():  # a module, or a package's __init__
                return path, parts[cut:]
    raise CopyError(f"{dotted} names no module under {root}")


def original_lines(root: Path, marker: Marker) -> List[str]:
    path, names = resolve_module(root, marker.source)
    where = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    if bool(marker.section) == bool(names):
        raise CopyError("name a class or def (module.Class.method) or a section of a module (module[section])")
    if marker.section:
        first, last = section_span(lines, marker.section, 0, where)
    else:
        first, last = object_span(ast.parse("\n".join(lines)), names, where)
    return lines[first:last + 1]


def copy_span(marker: Marker, lines: List[str], tree: ast.Module, where: str) -> Span:
    if marker.section:
        span = section_span(lines, marker.section, marker.index + 1, where)
        if span[0] != marker.index + 1:
            raise CopyError(f"the marker must stand right above the line '# ---- {marker.section} (begin)'")
        return span
    for node in ast.walk(tree):
        if isinstance(node, DEFINITIONS) and node_span(node)[0] == marker.index + 1:
            return node_span(node)
    raise CopyError("the marker must stand right above the class or def it marks (or its decorators)")


def reindent(lines: List[str], indent: str) -> List[str]:
    """Move `lines` from the indentation of their first line to `indent`; blank lines stay empty."""
    current = indent_of(lines[0])
    return [indent + line[len(current):] if line.startswith(current) and line.strip() else line.rstrip()
            for line in lines]


def expected_copy(root: Path, marker: Marker, indent: str) -> List[str]:
    text = "\n".join(reindent(original_lines(root, marker), indent))
    for old, new in parse_renames(marker.renames):
        text = text.replace(old, new)
    return text.split("\n")


def short_diff(expected: List[str], found: List[str], original: str, where: str) -> str:
    diff = list(difflib.unified_diff(expected, found, original, where, n=1, lineterm=""))
    if len(diff) > DIFF_LINES:
        diff = diff[:DIFF_LINES] + [f"... ({len(diff) - DIFF_LINES} more diff lines)"]
    return "\n".join("    " + line for line in diff)


def check_file(root: Path, path: Path, fix: bool) -> Tuple[List[str], Optional[str]]:
    """The problems of the copies in `path` (only those a fix cannot repair when `fix`), and its fixed text if any."""
    where = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines), filename=where)
    problems, replacements = [], []
    for marker in find_markers(lines):
        location = f"{where}:{marker.index + 1}"
        try:
            first, last = copy_span(marker, lines, tree, where)
            found = lines[first:last + 1]
            expected = expected_copy(root, marker, indent_of(found[0]))
        except CopyError as error:
            problems.append(f"{location}: copy of {marker.original}: {error}")
            continue
        if found != expected:
            replacements.append((first, last, expected))
            if not fix:
                changed = first + next((i for i, pair in enumerate(zip(expected, found)) if pair[0] != pair[1]),
                                       min(len(expected), len(found)))
                problems.append(f"{location}: the copy of {marker.original} differs from it at line {changed + 1} "
                                "(`python -m utils.check_copies --fix_and_overwrite` rewrites the copy):\n"
                                + short_diff(expected, found, marker.original, f"{where}:{first + 1}"))
    if not (fix and replacements):
        return problems, None
    for first, last, expected in sorted(replacements, reverse=True):  # bottom up: earlier line numbers stay valid
        lines[first:last + 1] = expected
    return problems, "\n".join(lines) + "\n"


def copied_files(root: Path) -> List[Path]:
    return sorted(path for folder in CHECKED_FOLDERS for path in (root / folder).rglob("*.py"))


def check_copies(root: Path = ROOT, fix: bool = False) -> List[str]:
    """Every problem of the copies under `root` (empty when all copies match). With `fix`, copies are rewritten from
    their originals until none changes (a copy of a fixed copy follows in the next pass)."""
    files = copied_files(root)
    chain_limit = 1 + sum(len(find_markers(path.read_text().splitlines())) for path in files)
    for _ in range(chain_limit):
        problems, rewritten = [], False
        for path in files:
            file_problems, fixed_text = check_file(root, path, fix)
            problems += file_problems
            if fixed_text is not None:
                path.write_text(fixed_text)
                rewritten = True
        if not rewritten:
            return problems
    return problems + ["the copies keep changing: markers copy from each other in a cycle"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fix_and_overwrite", action="store_true", help="rewrite drifted copies from their originals")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    problems = check_copies(args.root.resolve(), fix=args.fix_and_overwrite)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
