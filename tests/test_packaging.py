"""The wheel installs nothing but `encdec`, with its LICENSE and py.typed, and runs from a fresh
venv (console scripts, every backend); the sdist carries the sources, tests and docs; twine
accepts both; the version is written once (`encdec.__version__`). The one packaging check: CI
runs it as part of the test command."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

import encdec
from tests.conftest import session_dir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds the sdist and the wheel (a subprocess)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel, built once per session: two xdist workers building the same
    tree at once race on its build directories."""
    root = session_dir(tmp_path_factory, "dist")
    out = root / "out"
    with FileLock(str(root / "build.lock")):
        if not out.is_dir():
            tmp = root / "out.tmp"
            # --no-isolation: the test extra's setuptools builds, offline.
            run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                                  str(tmp), str(ROOT)], capture_output=True, text=True)
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            tmp.rename(out)
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


def test_wheel_runs_from_a_fresh_venv(dist, tmp_path):
    """The wheel alone (no deps, no index) in a fresh venv whose dependencies are this
    environment's site-packages (a plain .pth line: an editable encdec there stays invisible):
    both console scripts run and every backend imports from the installed wheel."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_path('purelib'))"], capture_output=True,
                          text=True, check=True).stdout.strip()
    before = set(Path(site).iterdir())
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                          "--quiet", "--no-deps", "--no-index", str(_one(dist, "encdec-*.whl"))],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    added = {p.name for p in set(Path(site).iterdir()) - before
             if not p.name.endswith(".dist-info")}
    assert added == {"encdec"}, added
    (Path(site) / "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for script in ("encdec", "encdec-convert"):
        run = subprocess.run([str(venv / "bin" / script), "--help"], capture_output=True,
                             text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
    check = ("import importlib, sys\n"
             "for name in ('encdec', 'encdec.core', 'encdec.pt', 'encdec.tf', 'encdec.flax',\n"
             "             'encdec.convert'):\n"
             "    f = importlib.import_module(name).__file__\n"
             "    assert f.startswith(sys.argv[1]), (name, f)\n")
    run = subprocess.run([str(python), "-c", check, site], capture_output=True, text=True,
                         cwd=tmp_path)  # away from the source tree
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
