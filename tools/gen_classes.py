"""Write `encdec/{pt,tf,flax}/classes.py`: the reference's class name of every architecture in
`encdec.core.registry.ARCHITECTURES` as an explicit class in the source, so that grep, IDEs,
type checkers and the API reference see `RobertaModel`, `BartForCausalLM`, ...

    python tools/gen_classes.py          # rewrite the files from the registry
    python tools/gen_classes.py --check  # exit 1, naming the stale files, when one differs

It also keeps each backend's `__init__.py` in step: its `from .classes import (...)` statement
and its `__all__` (the names before the generated ones, the composite and its alias, stay as
written; the generated classes follow in registry order).

A family's classes are its namesake architecture's (the `bert` family: `BertModel`,
`BertLMHeadModel`), defined in the backend's module of that name (`encdec/pt/bert.py`); they
are re-exported as they are. Every other architecture's class is a subclass whose only change is
`config_class`, so that its `from_pretrained` refuses a checkpoint of another model type. The
files are data-derived, never edited by hand: tests/test_classes_current.py compares them with
`render(backend)`. Needs only `encdec.core` (no framework).
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/gen_classes.py`
    sys.path.insert(0, str(ROOT))

from encdec.core.registry import ARCHITECTURES, Architecture  # noqa: E402

BACKENDS = ("pt", "tf", "flax")
WIDTH = 100  # ruff's line length
COMMAND = "python tools/gen_classes.py"


def path(backend: str) -> Path:
    """The generated file of `backend`."""
    return ROOT / "encdec" / backend / "classes.py"


def _namesake(family: str) -> Architecture:
    for arch in ARCHITECTURES:
        if arch.name == family:
            return arch
    raise SystemExit(f"family {family!r}: no architecture of that name gives its classes "
                     f"(registry: {[a.name for a in ARCHITECTURES]})")


def exports() -> list[tuple[str, str, str, Architecture]]:
    """(class name, family class name, family module, architecture) for each reference class
    name, in registry order; family classes themselves have class name == family class name."""
    out = []
    for arch in ARCHITECTURES:
        own = _namesake(arch.family)
        for name, family_name in ((arch.base_class, own.base_class),
                                  (arch.lm_class, own.lm_class)):
            if name is None:
                continue
            if family_name is None:
                raise SystemExit(f"{name}: the {arch.family} family's namesake architecture "
                                 f"has no class of that kind to subclass")
            out.append((name, family_name, arch.family, arch))
    return out


def _docstring(name: str, family_name: str, arch: Architecture) -> list[str]:
    text = f"transformers' `{name}`: encdec's `{family_name}` with `{arch.config_class.__name__}`."
    return textwrap.wrap(f'"""{text}"""', WIDTH, initial_indent="    ", subsequent_indent="    ")


def render(backend: str) -> str:
    """The text of `encdec/{backend}/classes.py`."""
    items = exports()
    family_imports: dict[str, set[str]] = {}
    for _name, family_name, family, _arch in items:
        family_imports.setdefault(family, set()).add(family_name)
    configs = sorted({arch.config_class.__name__ for name, family_name, _f, arch in items
                      if name != family_name}, key=str.lower)
    doc = (f"The reference's class name of every architecture, for encdec.{backend} "
           "(`RobertaModel`, `ElectraForCausalLM`, `MBartForCausalLM`, ...): a family's own "
           "class where the names agree, else a subclass whose only change is `config_class`, so "
           "that its `from_pretrained` refuses a checkpoint of another model type.")
    lines = [
        *textwrap.wrap('"""' + doc, WIDTH - 4),
        "",
        *textwrap.wrap("Generated from `encdec.core.registry.ARCHITECTURES` by "
                       f"tools/gen_classes.py: do not edit; run `{COMMAND}` after changing the "
                       "registry.", WIDTH - 4),
        '"""',
        "",
        "from encdec.core.config import (",
        *[f"    {c}," for c in configs],
        ")",
        "",
    ]
    for family in sorted(family_imports):
        lines.append(f"from .{family} import {', '.join(sorted(family_imports[family]))}")
    for name, family_name, _family, arch in items:
        if name == family_name:
            continue
        lines += ["", "", f"class {name}({family_name}):", *_docstring(name, family_name, arch),
                  "", f"    config_class = {arch.config_class.__name__}"]
    lines += ["", "", _render_all([name for name, *_ in items]).rstrip("\n"), ""]
    return "\n".join(lines)


def init_path(backend: str) -> Path:
    """The backend package's `__init__.py`, which imports and exports the generated classes."""
    return ROOT / "encdec" / backend / "__init__.py"


_IMPORT = re.compile(r"^from \.classes import \((?P<noqa>[^\n]*)\n(?:    \w+,\n)*\)\n", re.M)
_ALL = re.compile(r"^__all__ = \[\n(?P<body>(?:    [^\n]*\n)*)\]\n", re.M)


def sync_init(text: str) -> str:
    """`text` (a backend's `__init__.py`) with its import of `.classes` and its `__all__` made
    to list exactly the generated classes; names of `__all__` that are not generated (the
    composite, its alias) keep their place in front."""
    names = [name for name, *_ in exports()]
    imp, old_all = _IMPORT.search(text), _ALL.search(text)
    if imp is None or old_all is None:
        raise SystemExit("expected a `from .classes import (` statement, one name a line, and a "
                         "multi-line `__all__ = [` in each backend's __init__.py")
    block = "".join(f"    {n},\n" for n in sorted(names, key=str.lower))
    text = text[:imp.start()] + f"from .classes import ({imp['noqa']}\n{block})\n" + \
        text[imp.end():]
    old_all = _ALL.search(text)
    assert old_all is not None
    leading = [n for n in re.findall(r'"(\w+)"', old_all["body"]) if n not in names]
    return text[:old_all.start()] + _render_all([*leading, *names]) + text[old_all.end():]


def _render_all(names: list[str]) -> str:
    lines, row = ["__all__ = ["], "   "
    for n in names:
        item = f' "{n}",'
        if len(row) + len(item) > WIDTH:
            lines.append(row)
            row = "   "
        row += item
    return "\n".join([*lines, row, "]"]) + "\n"


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__)
        return 2
    stale = []
    for backend in BACKENDS:
        init = init_path(backend)
        for target, text in ((path(backend), render(backend)),
                             (init, sync_init(init.read_text()))):
            if target.exists() and target.read_text() == text:
                continue
            stale.append(str(target.relative_to(ROOT)))
            if not check:
                target.write_text(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run `{COMMAND}`")
        return 1
    for name in stale:
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
