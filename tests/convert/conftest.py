"""Fixtures of the converter tests: the reference's own pt/tf/flax files and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.convert.cli import main as convert_main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _formats(name: str) -> tuple[str, ...]:
    return tuple(json.loads((FIXTURES / name / "MANIFEST.json").read_text())["formats"])


# every composite under tests/fixtures/reference and the formats the reference wrote it in
COMPOSITES = tuple(sorted(p.parent.name for p in FIXTURES.glob("*/MANIFEST.json")))
FORMATS = {name: _formats(name) for name in COMPOSITES}
# (composite, format) for each file the reference wrote; REFERENCE_FILES: tf / flax only
FIXTURE_FILES = tuple((n, f) for n in COMPOSITES for f in FORMATS[n])
REFERENCE_FILES = tuple((n, f) for n, f in FIXTURE_FILES if f != "pt")


def fixture_dir(name: str, fmt: str) -> Path:
    """tests/fixtures/reference/<name>/<fmt>: files written by transformers 4.57."""
    return FIXTURES / name / fmt


def fixture_inputs(name: str) -> dict[str, np.ndarray]:
    """The batch and the reference's recorded logits of a fixture."""
    return dict(np.load(FIXTURES / name / "inputs_logits.npz"))


@pytest.fixture
def convert(capsys):
    """`convert(*argv)` -> (exit code, stdout, stderr) of `encdec-convert`, run in-process."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = convert_main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
