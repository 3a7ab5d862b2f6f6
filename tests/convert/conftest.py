"""Fixtures of the converter tests: the reference's own pt/tf/flax files and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encdec.convert.cli import main as convert_main
from tests.tiny import tiny_kwargs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _formats(name: str) -> tuple[str, ...]:
    return tuple(json.loads((FIXTURES / name / "MANIFEST.json").read_text())["formats"])


# every composite under tests/fixtures/reference and the formats the reference wrote it in
COMPOSITES = tuple(sorted(p.parent.name for p in FIXTURES.glob("*/MANIFEST.json")))
FORMATS = {name: _formats(name) for name in COMPOSITES}
# (composite, format) for each file the reference wrote; REFERENCE_FILES: tf / flax only
FIXTURE_FILES = tuple((n, f) for n in COMPOSITES for f in FORMATS[n])
REFERENCE_FILES = tuple((n, f) for n, f in FIXTURE_FILES if f != "pt")


def tiered(files, fast: frozenset[str] = frozenset({"bert2bert"})) -> list:
    """pytest params of (composite, format): the composites in `fast` in the fast subset, every
    other one marked slow (the same converter code, another architecture's names: CI)."""
    return [pytest.param(n, f, marks=() if n in fast else pytest.mark.slow) for n, f in files]


def fixture_dir(name: str, fmt: str) -> Path:
    """tests/fixtures/reference/<name>/<fmt>: files written by transformers 4.57."""
    return FIXTURES / name / fmt


def fixture_inputs(name: str) -> dict[str, np.ndarray]:
    """The batch and the reference's recorded logits of a fixture."""
    return dict(np.load(FIXTURES / name / "inputs_logits.npz"))


def reference_pair(encoder: str, decoder: str, directory: Path, **composite: Any) -> Path:
    """A transformers EncoderDecoderModel of the pair (model types), random weights (biases and
    LayerNorms too), saved with save_pretrained; `composite` is set on the composite config."""
    import torch
    import transformers as tr

    def config(model_type: str, **kw):  # pad 1: RoBERTa's positions start at 2, as in its
        return tr.AutoConfig.for_model(model_type, **tiny_kwargs(model_type),  # checkpoints
                                       bos_token_id=0, pad_token_id=1, eos_token_id=3, **kw)

    cfg = tr.EncoderDecoderConfig.from_encoder_decoder_configs(
        config(encoder), config(decoder, is_decoder=True, add_cross_attention=True))
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 1, 3
    for k, v in composite.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    model = tr.EncoderDecoderModel(config=cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower() or ".ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def convert(capsys):
    """`convert(*argv)` -> (exit code, stdout, stderr) of `encdec-convert`, run in-process."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = convert_main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
