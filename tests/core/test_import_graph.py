"""encdec's import graph, read with `ast` (nothing is imported): no cycle, no import in a function.

Rules (issue 20): module-level imports between encdec modules form no cycle; an encdec module is
never imported inside a function to dodge one. One exception: code outside a backend may import
a backend package (encdec.pt / encdec.tf / encdec.flax or one of their modules) lazily, since
that imports an optional framework; a backend's modules may not do so among themselves.
`importlib.import_module("encdec....")` with a literal name counts as an import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("pt", "tf", "flax")


@dataclass(frozen=True)
class LateImport:
    """An import of a package module found inside a function."""

    path: Path
    line: int
    function: str
    importer: str
    target: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): imports {self.target}"


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (a directory under `root`) by dotted name (a package: its
    __init__)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_module(node: ast.AST) -> ast.Import | None:
    """`importlib.import_module("a.b")` (a literal name) as the `import a.b` it amounts to."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__"):
        return None
    return ast.Import(names=[ast.alias(name=node.args[0].value)], lineno=node.lineno)


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str | None]]:
    """Every runtime import with the qualified name of the function it sits in (None: it runs
    when the module is imported; a class body does)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str | None]] = []

    def visit(node: ast.AST, scope: str, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            dynamic = _import_module(child)
            if dynamic is not None:
                found.append((dynamic, function))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, function))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                name = scope + getattr(child, "name", "<lambda>")
                visit(child, name + ".", name)
            elif isinstance(child, ast.ClassDef):
                visit(child, scope + child.name + ".", function)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:  # the `if` body never runs
                    visit(ast.Module(body=[statement], type_ignores=[]), scope, function)
            else:
                visit(child, scope, function)

    visit(tree, "", None)
    return found


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
             modules: dict[str, Path]) -> list[str]:
    """The package modules that `node` (in module `importer`) runs: the named ones and the
    `__init__` of each package above them that is not already running (an ancestor of
    `importer`)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".") if is_package else importer.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        # `from pkg import sub` imports the submodule; `from pkg import name` needs pkg itself
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    targets: list[str] = []
    for name in names:
        while name and name not in modules:  # `import a.b.name` of a non-module: its module
            name = name.rpartition(".")[0]
        parts = name.split(".") if name else []
        for n in range(1, len(parts) + 1):
            module = ".".join(parts[:n])
            running = importer == module or importer.startswith(module + ".")
            if module in modules and module not in targets and (n == len(parts) or not running):
                targets.append(module)
    return targets


def _backend(module: str, package: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package and parts[1] in BACKENDS else None


def _lazy_backend(importer: str, target: str, package: str) -> bool:
    """The one function-level import allowed: a backend's module, from outside that backend."""
    backend = _backend(target, package)
    return backend is not None and backend != _backend(importer, package)


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[LateImport]]:
    """The module-level import graph of `package`, and the function-level imports that break
    the rule."""
    modules = package_modules(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    late: list[LateImport] = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, function in _imports(tree):
            for target in _targets(node, importer, path.name == "__init__.py", modules):
                if function is None:
                    if target != importer:
                        graph[importer].add(target)
                elif not _lazy_backend(importer, target, package):
                    late.append(LateImport(path.relative_to(root), node.lineno, function,
                                           importer, target))
    return graph, late


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a closed path a -> ... -> a) for each strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:  # a shortest path back to the component's first module
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt_frontier = []
            for node in frontier:
                for nxt in sorted(graph[node] & component):
                    if nxt == start:
                        cycle = paths[node] + [start]
                        break
                    if nxt not in paths:
                        paths[nxt] = paths[node] + [nxt]
                        nxt_frontier.append(nxt)
                if cycle:
                    break
            frontier = nxt_frontier
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def check(root: Path, package: str) -> list[str]:
    """Every problem in the package's imports, one line each."""
    graph, late = import_graph(root, package)
    problems = ["import cycle: " + " -> ".join(cycle) for cycle in find_cycles(graph)]
    problems += [f"function-level import: {item}" for item in late]
    return problems


ENCDEC_ROOT = Path(__file__).resolve().parents[2]  # the repository: encdec/ and tests/


def test_encdec_imports_have_no_cycle_and_none_inside_functions():
    problems = check(ENCDEC_ROOT, "encdec")
    assert not problems, "\n".join(problems)


def core_layers() -> list[list[str]]:
    """The layers of encdec.core, lowest first, as its __init__'s docstring lists them."""
    tree = ast.parse((ENCDEC_ROOT / "encdec/core/__init__.py").read_text())
    doc = ast.get_docstring(tree) or ""
    return [[f"encdec.core.{name}" for name in line.strip().split("  ")[0].split(", ")]
            for line in doc.splitlines() if line.startswith("    ") and line.strip()]


def test_core_modules_import_only_the_layers_below():
    graph, _ = import_graph(ENCDEC_ROOT, "encdec")
    assert "encdec.core.config" in graph["encdec.core.weights"]  # the parser sees the edges
    layers = core_layers()
    rank = {module: n for n, layer in enumerate(layers) for module in layer}
    core = {m for m in graph if m.startswith("encdec.core.")}
    assert core == set(rank), "encdec/core/__init__.py's docstring lists every core module once"
    upward = [f"{module} (layer {rank[module]}) imports {target} (layer {rank[target]})"
              for module in sorted(core) for target in sorted(graph[module] & core)
              if rank[target] >= rank[module]]
    assert not upward, "\n".join(upward)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_checker_finds_a_cycle(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import B\nA = 1\n",
        "pkg/b.py": "from . import c\nB = 2\n",
        "pkg/c.py": "import pkg.a\nC = 3\n",
        "pkg/d.py": "from pkg.a import A\n",
    })
    assert check(tmp_path, "pkg") == ["import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a"]


def test_checker_follows_package_inits(tmp_path):
    """Importing pkg.sub.y runs pkg/sub/__init__.py first, and that closes this cycle."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .x import X\n",
        "pkg/sub/x.py": "from pkg.other import O\nX = 1\n",
        "pkg/sub/y.py": "Y = 1\n",
        "pkg/other.py": "from pkg.sub.y import Y\nO = 1\n",
    })
    assert check(tmp_path, "pkg") == [
        "import cycle: pkg.other -> pkg.sub -> pkg.sub.x -> pkg.other"]


def test_checker_finds_a_function_level_import(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/core.py": "import json\n\ndef load():\n    import numpy\n    from .util import f\n",
        "pkg/late.py": "import importlib\n\ndef f():\n    importlib.import_module('pkg.util')\n",
        "pkg/util.py": "def f():\n    pass\n",
        "pkg/cli.py": "def main():\n    from pkg.pt import model\n",  # a backend, lazily: allowed
        "pkg/pt/__init__.py": "",
        "pkg/pt/model.py": "class M:\n    def f(self):\n        from ..pt import other\n",
        "pkg/pt/other.py": "",
    })
    problems = check(tmp_path, "pkg")
    assert problems == [
        f"function-level import: {Path('pkg/core.py')}:5 in load(): imports pkg.util",
        f"function-level import: {Path('pkg/late.py')}:4 in f(): imports pkg.util",
        f"function-level import: {Path('pkg/pt/model.py')}:3 in M.f(): imports pkg.pt.other",
    ]


def test_checker_ignores_type_checking_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/b.py": "from .a import A\n",
    })
    assert check(tmp_path, "pkg") == []

