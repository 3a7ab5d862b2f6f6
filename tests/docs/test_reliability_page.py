"""docs/reliability.md is what the library does with every bad input (tests/docs/reliability.py
runs each case in every backend)."""

from pathlib import Path

import pytest

from tests.docs.reliability import render

pytestmark = pytest.mark.slow  # runs every bad input in every backend (CI)
PAGE = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_reliability_page_is_generated_from_the_cases():
    assert PAGE.read_text() == render(), (
        "docs/reliability.md is out of date: python -m tests.docs.reliability > "
        "docs/reliability.md")
