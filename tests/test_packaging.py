"""The wheel installs nothing but `encdec`, with its LICENSE and py.typed; the sdist carries the
sources, tests and docs; the version is written once (`encdec.__version__`)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import encdec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds the sdist and the wheel (a subprocess)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the test extra's setuptools builds, offline.
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                          str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def _one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {dist}, found {found}"
    return found[0]


def test_wheel_installs_only_encdec(dist):
    wheel = _one(dist, "encdec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    dist_info = f"encdec-{encdec.__version__}.dist-info"
    assert top == {"encdec", dist_info}, top
    assert "encdec/py.typed" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tools/", "tests/")) or "/fixtures/" in n]
    # every subpackage made it (a missing __init__.py would drop one silently)
    for package in ("core", "pt", "tf", "flax", "convert", "onnx"):
        assert f"encdec/{package}/__init__.py" in names, package


def test_wheel_metadata(dist):
    wheel = zipfile.ZipFile(_one(dist, "encdec-*.whl"))
    dist_info = f"encdec-{encdec.__version__}.dist-info"
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert f"\nVersion: {encdec.__version__}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    assert 'Requires-Dist: encdec[convert,export,flax,tf,torch]; extra == "all"' in metadata
    scripts = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "encdec = encdec.cli:main" in scripts
    assert "encdec-convert = encdec.convert.cli:main" in scripts


def test_sdist_carries_sources_tests_and_docs(dist):
    sdist = _one(dist, "encdec-*.tar.gz")
    prefix = f"encdec-{encdec.__version__}/"
    names = {n.removeprefix(prefix) for n in tarfile.open(sdist).getnames()}
    for path in ("LICENSE", "pyproject.toml", "README.md", "mkdocs.yml", "encdec/py.typed",
                 "encdec/core/registry.py", "tests/conftest.py", "docs/index.md",
                 "docs/api/core.md", "tools/convert/convert.py"):
        assert path in names, path
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_twine_check(dist):
    run = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                          *map(str, sorted(dist.iterdir()))], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_version_is_written_once():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "encdec.__version__" }' in pyproject
    assert "\nversion =" not in pyproject.split("[tool.setuptools.dynamic]")[0]
