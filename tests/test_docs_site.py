"""The documentation site: `mkdocs build --strict` passes, its API reference lists every public
name of encdec.core, encdec.pt, encdec.tf and encdec.flax, each backend's page opens on the
composite `EncoderDecoderModel`, every config field shows its one-line meaning, no page carries a
builtin type's docstring (int's, float's, ... as inspecting live objects gave config fields), and
the strict build does fail on a broken link or an unresolvable API reference (the configuration's
checks are live). The site is built once per test session."""

from __future__ import annotations

import builtins
import dataclasses
import html
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import encdec.core
from encdec.core.config import EncoderDecoderConfig, GenerationConfig, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # mkdocs in a subprocess; the full site imports every backend
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
       "KERAS_BACKEND": "tensorflow"}


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(config), "--site-dir", str(site)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The project's site, built once."""
    site = tmp_path_factory.mktemp("docs") / "site"
    run = _mkdocs(ROOT / "mkdocs.yml", site)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return site


def _api_page(site: Path, name: str) -> str:
    return (site / "api" / name / "index.html").read_text()


def test_site_builds_and_lists_every_public_class(site):
    for name in ("core", "pt", "tf", "flax", "convert"):
        module = importlib.import_module(f"encdec.{name}")
        page = _api_page(site, name)
        missing = [n for n in module.__all__ if f'id="encdec.{name}.{n}"' not in page]
        assert not missing, f"docs/api/{name}.md does not render {missing}"


def _text(page: str) -> str:
    """A page's words: tags dropped, entities decoded, whitespace runs as one space."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


# The first line of every builtin type's docstring ("int([x]) -> integer", "Convert a string or
# number to a floating point number, if possible.", "str(object='') -> str", ...)
BUILTIN_DOCS = {" ".join(obj.__doc__.strip().splitlines()[0].split()): name
                for name, obj in vars(builtins).items()
                if isinstance(obj, type) and obj.__doc__ and len(obj.__doc__.strip()) >= 15}


def test_no_page_shows_a_builtin_docstring(site):
    """Neither the pages nor the search index (each copy counted, as the issue's 322 float and
    738 int docstrings were: half in the pages, half in the index)."""
    assert "int([x]) -> integer" in BUILTIN_DOCS and len(BUILTIN_DOCS) > 50
    texts = {str(page.relative_to(site)): _text(page.read_text())
             for page in sorted(site.rglob("*.html"))}
    index = json.loads((site / "search" / "search_index.json").read_text())
    texts |= {f"search index: {doc['location']}": _text(doc["text"]) for doc in index["docs"]}
    found = [f"{where}: {name}'s {doc!r} x{text.count(doc)}" for where, text in texts.items()
             for doc, name in BUILTIN_DOCS.items() if doc in text]
    assert not found, f"{len(found)} builtin docstrings on the site:\n" + "\n".join(found)


@pytest.mark.parametrize("backend", ["pt", "tf", "flax"])
def test_backend_page_opens_on_the_composite(site, backend):
    """EncoderDecoderModel is the first object documented, before any backbone (or alias)."""
    ids = re.findall(rf'<h\d id="encdec\.{backend}\.(\w+)"', _api_page(site, backend))
    assert ids and ids[0] == "EncoderDecoderModel", (
        f"docs/api/{backend}.md: the first class shown is {ids[:1]}, not EncoderDecoderModel "
        f"(order: {ids[:5]})")


CONFIGS = (ModelConfig, EncoderDecoderConfig, GenerationConfig)


def test_every_config_field_shows_its_meaning(site):
    """Each field a config class declares has a heading followed by its one-line docstring."""
    page = _api_page(site, "core")
    configs = [getattr(encdec.core, n) for n in encdec.core.__all__]
    configs = [c for c in configs if isinstance(c, type) and issubclass(c, CONFIGS)]
    assert ModelConfig in configs and len(configs) > 10
    bare = []
    for cls in configs:
        own = [f.name for f in dataclasses.fields(cls) if f.name in vars(cls)["__annotations__"]]
        for name in own:
            anchor = f'id="encdec.core.{cls.__name__}.{name}"'
            start = page.find(anchor)
            after = page[start:page.find("</div>", page.find("doc-contents", start))]
            if start < 0 or "<p>" not in after:
                bare.append(f"{cls.__name__}.{name}")
    assert not bare, f"config fields without a docstring on the core page: {bare}"


def _broken_site(tmp_path: Path, page: str) -> subprocess.CompletedProcess:
    """The project's mkdocs.yml over a one-page docs folder holding `page`."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")


def test_strict_build_fails_on_a_broken_link(tmp_path):
    run = _broken_site(tmp_path, "# Home\n\nSee [the guide](no-such-page.md).\n")
    assert run.returncode != 0
    assert "no-such-page.md" in run.stdout + run.stderr


def test_strict_build_fails_on_a_missing_api_reference(tmp_path):
    run = _broken_site(tmp_path, "# Home\n\n::: encdec.core.NoSuchConfig\n")
    assert run.returncode != 0
    assert "encdec.core.NoSuchConfig" in run.stdout + run.stderr
