"""encdec.core imports no framework, and nothing in encdec imports transformers."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import encdec

BLOCKED = ("torch", "tensorflow", "jax", "jaxlib", "flax", "keras", "transformers", "tf_keras")
PACKAGE_DIR = Path(encdec.__file__).resolve().parent

_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"import of {name!r} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import encdec.core

    names = ["encdec", "encdec.core"]
    for info in pkgutil.walk_packages(encdec.core.__path__, "encdec.core."):
        importlib.import_module(info.name)
        names.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("\\n".join(names))
    """
)


def test_core_imports_without_frameworks():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        cwd=PACKAGE_DIR.parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert "encdec.core.checkpoint" in imported
    expected = {
        f"encdec.core.{p.stem}" for p in (PACKAGE_DIR / "core").glob("*.py") if p.stem != "__init__"
    }
    assert expected <= set(imported)


def test_blocker_really_blocks():
    code = _SCRIPT.replace("import encdec.core", "import encdec.core\nimport numpy, torch")
    result = subprocess.run(
        [sys.executable, "-c", code, ",".join(BLOCKED)],
        capture_output=True,
        text=True,
        cwd=PACKAGE_DIR.parent,
        timeout=300,
    )
    assert result.returncode != 0
    assert "import of 'torch' is blocked" in result.stderr


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def test_no_module_in_encdec_imports_transformers():
    offenders = []
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_modules(tree):
            if name.split(".")[0] == "transformers":
                offenders.append(f"{path.relative_to(PACKAGE_DIR.parent)}: {name}")
    assert not offenders, "encdec must not import transformers:\n" + "\n".join(offenders)
