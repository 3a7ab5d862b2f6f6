"""The documentation site: `mkdocs build --strict` passes, its API reference lists every public
name of encdec.core, encdec.pt, encdec.tf and encdec.flax, and the strict build does fail on a
broken link or an unresolvable API reference (the configuration's checks are live)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # mkdocs in a subprocess; the full site imports every backend
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
       "KERAS_BACKEND": "tensorflow"}


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(config), "--site-dir", str(site)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV)


def test_site_builds_and_lists_every_public_class(tmp_path):
    run = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("core", "pt", "tf", "flax", "convert"):
        module = importlib.import_module(f"encdec.{name}")
        page = (tmp_path / "site" / "api" / name / "index.html").read_text()
        missing = [n for n in module.__all__ if f'id="encdec.{name}.{n}"' not in page]
        assert not missing, f"docs/api/{name}.md does not render {missing}"


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
