"""docs/architectures.md is the rendering of the registry (tests/docs/architectures.py)."""

from pathlib import Path

from tests.docs.architectures import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"


def test_architectures_page_is_generated_from_the_registry():
    assert PAGE.read_text() == render(), (
        "docs/architectures.md is out of date: python -m tests.docs.architectures > "
        "docs/architectures.md")
