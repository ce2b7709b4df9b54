"""The layers import downward only, and no module imports one that imports it (DESIGN.md, "Layout").

Layers, lowest first: modeling <- hub_exports <- eval_suites <- trainers; scripts, benchmarks and tests sit on top.
The graph is read from the source (AST), not from an import run: every `import` statement anywhere in a module counts,
at module level or inside a function, absolute or relative, and `from pkg import name` counts as an import of the
submodule `pkg.name` where there is one, else of the package `pkg` itself. Importing a submodule runs its packages'
`__init__` too, but that is Python's machinery, not a dependency of the importer, so it is not an edge.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("modeling", "hub_exports", "eval_suites", "trainers")
ABOVE_ALL = ("scripts", "benchmarks", "tests")  # may import any layer; no layer may import them


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str, modules: set) -> set:
    """The modules of `modules` (and the names of ABOVE_ALL) that the file `path` of `module` imports."""
    targets = set()

    def add(name):
        if name in modules:
            targets.add(name)
        elif name.split(".")[0] in ABOVE_ALL:
            targets.add(name.split(".")[0])

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - (node.level - 1)] + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return targets - {module}


def import_graph(root: Path, packages=LAYERS) -> dict:
    """{module: the modules of `packages` it imports} for every .py file under `root/<package>`; an import of the
    layers above all (ABOVE_ALL) is an edge to that top-level name."""
    files = {module_name(path, root): path for package in packages for path in (root / package).rglob("*.py")}
    return {module: imported_modules(path, module, set(files)) for module, path in files.items()}


def layer(module: str, packages=LAYERS) -> int:
    top = module.split(".")[0]
    return packages.index(top) if top in packages else len(packages)


def upward_imports(graph: dict, packages=LAYERS) -> list:
    """(importer, imported) pairs where the imported module sits in a higher layer than its importer."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if layer(target, packages) > layer(module, packages))


def enclosing_package_imports(graph: dict) -> list:
    """(module, package) pairs where a module imports a package that encloses it. The package's `__init__` gathers
    its modules' names for the layers above; a module of its own that imports them closes a cycle as soon as the
    `__init__` imports that module (directly or not), so none may."""
    return sorted((module, target) for module, targets in graph.items() for target in targets
                  if module.startswith(target + "."))


def import_cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted, the list sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_import_cycles():
    cycles = import_cycles(import_graph(REPO))
    assert not cycles, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_no_module_imports_its_own_package():
    inward = enclosing_package_imports(import_graph(REPO))
    assert not inward, "modules that import the package around them (import its modules instead): " + "; ".join(
        f"{module} imports {package}" for module, package in inward)


def test_layers_import_downward_only():
    upward = upward_imports(import_graph(REPO))
    assert not upward, "imports from a higher layer (" + " <- ".join(LAYERS) + "): " + "; ".join(
        f"{importer} imports {imported}" for importer, imported in upward)


def test_the_graph_finds_planted_cycles_and_upward_imports(tmp_path):
    files = {
        "low/__init__.py": "",
        "low/model.py": "import os\n\ndef build():\n    from high.tools import helper  # upward, inside a function\n",
        "high/__init__.py": "from high.tools import helper\n",
        "high/tools.py": "from . import checks\n\nhelper = 1\n",
        "high/checks.py": "def check():\n    from .tools import helper\n",
        "high/leaf.py": "from high import checks, helper\nimport benchmarks.run\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    packages = ("low", "high")
    graph = import_graph(tmp_path, packages)
    assert graph["high.leaf"] == {"high.checks", "high", "benchmarks"}
    assert graph["high"] == {"high.tools"}  # a package's own submodule, not a cycle with every module in it
    assert import_cycles(graph) == [["high.checks", "high.tools"]]
    assert enclosing_package_imports(graph) == [("high.leaf", "high")]
    assert upward_imports(graph, packages) == [("high.leaf", "benchmarks"), ("low.model", "high.tools")]
