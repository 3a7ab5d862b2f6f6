"""The generated `encdec/{pt,tf,flax}/classes.py` (the reference's class names, one class per
architecture) are what tools/gen_classes.py makes from the registry now, and each backend's
`__init__` exports exactly them after its composite. Reads the files; imports no framework."""

from __future__ import annotations

import ast

import pytest

from tools import gen_classes

# The composite, then the reference's backend-prefixed alias of it where there is one.
LEADING = {"pt": ["EncoderDecoderModel"],
           "tf": ["EncoderDecoderModel", "TFEncoderDecoderModel"],
           "flax": ["EncoderDecoderModel", "FlaxEncoderDecoderModel"]}


@pytest.mark.parametrize("backend", gen_classes.BACKENDS)
def test_generated_classes_are_current(backend):
    path = gen_classes.path(backend)
    assert path.exists() and path.read_text() == gen_classes.render(backend), (
        f"{path.relative_to(gen_classes.ROOT)} is out of date with the registry: run "
        f"`{gen_classes.COMMAND}` and commit the result")


def _all(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == \
                ["__all__"]:
            return ast.literal_eval(node.value)
    raise AssertionError("no literal __all__")


@pytest.mark.parametrize("backend", gen_classes.BACKENDS)
def test_backend_exports_the_composite_then_every_generated_class(backend):
    init = gen_classes.ROOT / "encdec" / backend / "__init__.py"
    tree = ast.parse(init.read_text())
    generated = _all(ast.parse(gen_classes.path(backend).read_text()))
    assert generated == [name for name, *_ in gen_classes.exports()]
    assert gen_classes.sync_init(init.read_text()) == init.read_text(), (
        f"{init.relative_to(gen_classes.ROOT)} does not import or export every generated class: "
        f"run `{gen_classes.COMMAND}`")
    imported = [a.name for node in tree.body if isinstance(node, ast.ImportFrom)
                and node.module == "classes" and node.level == 1 for a in node.names]
    assert sorted(imported) == sorted(generated), (
        f"{init.relative_to(gen_classes.ROOT)} should import from .classes exactly "
        f"{sorted(generated)}")
    assert _all(tree) == LEADING[backend] + generated, (
        f"{init.relative_to(gen_classes.ROOT)}: __all__ should be {LEADING[backend]} then "
        f"classes.__all__ in its order")
    assert not any(isinstance(node, ast.Expr) and "globals" in ast.unparse(node)
                   for node in tree.body), "names are imported, never made with globals()"


def test_every_reference_class_is_a_class_statement():
    """`grep -rn "class RobertaModel" encdec/` finds each backend's."""
    for backend in gen_classes.BACKENDS:
        text = gen_classes.path(backend).read_text()
        for name, family_name, _family, _arch in gen_classes.exports():
            if name != family_name:
                assert f"\nclass {name}({family_name}):\n" in text, (backend, name)
