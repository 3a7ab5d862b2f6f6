"""The command lines: `encdec-convert --help`, `encdec parity` in-process, and real subprocess
runs of `encdec-convert` (offline, quiet); `encdec demo` is tested in tests/test_demo.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encdec.cli import main as encdec_main
from encdec.convert import backends
from encdec.core.registry import ARCHITECTURES

from .conftest import fixture_dir, reference_pair

pytestmark = pytest.mark.slow  # encdec-convert runs in subprocesses

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
       "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
NOISE = ("oneDNN", "absl::InitializeLog", "cuda", "TensorFlow binary is optimized", "Traceback")


def test_help_documents_every_option_and_exit_code(convert):
    code, out, _ = convert("--help")
    assert code == 0
    for option in ("--to", "--from", "--split", "--no-verify", "--dtype", "--shard-size",
                   "--force"):
        assert any(line.strip().startswith("encdec-convert") and option in line
                   for line in out.splitlines()), f"no example for {option}"
    for code_line in ("0  converted", "1  verification failed", "2  usage", "3  bad input",
                      "4  output", "5  a framework"):
        assert code_line in out


@pytest.mark.parametrize("name, fmt", [*(("bert2gpt2", f) for f in ("pt", "tf", "flax")),
                                       ("bert2bart", "pt"), ("bert2bart", "flax")])
def test_parity_every_backend(capsys, name, fmt):
    code = encdec_main(["parity", str(fixture_dir(name, fmt))])
    out = capsys.readouterr().out
    assert code == 0, out
    for label in ("transformers (reference) *", "encdec.pt", "encdec.tf", "encdec.flax"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert line.endswith("OK") and "agree" in line
        d_logits, d_loss = (float(x) for x in line[len(label):].split()[:2])
        assert d_logits <= 1e-5 and d_loss <= 1e-5


def _covering_pairs() -> list[tuple[str, str]]:
    """Every registered architecture as the encoder once where it can encode, and as the
    decoder once where it can decode (cycles through the registry, so a new entry is picked
    up; the BART family is decoder-only)."""
    encoders = [a.name for a in ARCHITECTURES if a.can_encode]
    decoders = [a.name for a in ARCHITECTURES if a.can_decode]
    n = max(len(encoders), len(decoders))
    return [(encoders[i % len(encoders)], decoders[(i + 1) % len(decoders)]) for i in range(n)]


@pytest.mark.parametrize("encoder, decoder", _covering_pairs())
def test_parity_every_architecture(capsys, tmp_path, encoder, decoder):
    """`encdec parity` on a checkpoint of each registered architecture, on both sides."""
    ckpt = reference_pair(encoder, decoder, tmp_path / f"{encoder}2{decoder}")
    code = encdec_main(["parity", str(ckpt), "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    for label in ("transformers (reference) *", "encdec.pt", "encdec.tf", "encdec.flax"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert line.endswith("OK") and "agree" in line, line


def test_parity_fails_above_the_bound(capsys, monkeypatch):
    real = backends.forward

    def drifting(framework, model, batch):
        out = real(framework, model, batch)
        if framework == "flax":
            out["logits"] = out["logits"] + np.float32(2e-5)
        return out

    monkeypatch.setattr(backends, "forward", drifting)
    code = encdec_main(["parity", str(fixture_dir("bert2bert", "pt")), "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert code == 1
    flax_line = next(line for line in out.splitlines() if line.startswith("encdec.flax"))
    assert flax_line.endswith("FAIL")


def test_parity_bad_checkpoint(capsys, tmp_path):
    assert encdec_main(["parity", str(tmp_path)]) == 3
    assert str(tmp_path) in capsys.readouterr().err


def test_encdec_convert_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "encdec.convert.cli", str(fixture_dir("bert2gpt2", "flax")),
         str(tmp_path / "pt"), "--to", "pt"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "verify: max |Δlogits|" in proc.stdout
    assert (tmp_path / "pt" / "model.safetensors").is_file()
    assert not any(n in proc.stdout + proc.stderr for n in NOISE), proc.stderr
