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

pytestmark = pytest.mark.slow  # parity runs every backend; one encdec-convert subprocess

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


LABELS = {"transformers": "transformers (reference) *", "pt": "encdec.pt", "tf": "encdec.tf",
          "flax": "encdec.flax"}
EVERY = ("transformers", "pt", "tf", "flax")


def parity(capsys, ckpt, backends=EVERY, *options: str) -> tuple[int, dict[str, str]]:
    """`encdec parity CKPT --backends ...` in-process -> (exit code, {backend: its table row});
    every requested backend has exactly one row, no other backend has one."""
    code = encdec_main(["parity", str(ckpt), "--backends", ",".join(backends), *options])
    out = capsys.readouterr().out
    rows = {b: [line for line in out.splitlines() if line.startswith(LABELS[b])]
            for b in EVERY}
    assert all(len(rows[b]) == (b in backends) for b in EVERY), out
    return code, {b: rows[b][0] for b in backends}


# The reference's own files of each format go through the converter (canonical_checkpoint)
# into one float32 checkpoint that every backend then loads the same way; so each input format
# runs against transformers and encdec.pt, and two runs take every backend through the command:
# bert2gpt2 from pt files, and the BART family's decoder from the reference's flax files.
@pytest.mark.parametrize("name, fmt, backends", [
    pytest.param(n, f, b, id=f"{n}-{f}-{'+'.join(b)}") for n, f, b in (
        ("bert2gpt2", "pt", EVERY), ("bert2gpt2", "tf", EVERY[:2]),
        ("bert2gpt2", "flax", EVERY[:2]), ("bert2bart", "pt", EVERY[:2]),
        ("bert2bart", "flax", EVERY))])
def test_parity_every_backend(capsys, name, fmt, backends):
    code, rows = parity(capsys, fixture_dir(name, fmt), backends)
    assert code == 0, rows
    for b, line in rows.items():
        assert line.endswith("OK") and "agree" in line, line
        d_logits, d_loss = (float(x) for x in line[len(LABELS[b]):].split()[:2])
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
    """`encdec parity` on a checkpoint of each registered architecture, on both sides: what the
    command does per architecture (the config read, the random batch within each side's
    vocabulary and positions, the start and pad ids, loading) is the same for every backend, so
    it runs against encdec.pt; every pair's forward and greedy and beam tokens in pt, tf and
    flax against transformers: tests/harness/test_architectures.py."""
    ckpt = reference_pair(encoder, decoder, tmp_path / f"{encoder}2{decoder}")
    code, rows = parity(capsys, ckpt, EVERY[:2], "--max-new-tokens", "4")
    assert code == 0, rows
    assert rows["pt"].endswith("OK") and "agree" in rows["pt"], rows["pt"]


def test_parity_fails_above_the_bound(capsys, monkeypatch):
    """A backend 2e-5 off the baseline's logits fails the command (the bound is 1e-5)."""
    real = backends.forward

    def drifting(framework, model, batch):
        out = real(framework, model, batch)
        if framework == "pt":
            out["logits"] = out["logits"] + np.float32(2e-5)
        return out

    monkeypatch.setattr(backends, "forward", drifting)
    code, rows = parity(capsys, fixture_dir("bert2bert", "pt"), EVERY[:2],
                        "--max-new-tokens", "2")
    assert code == 1
    assert rows["transformers"].endswith("OK")
    assert rows["pt"].endswith("FAIL") and "agree" in rows["pt"], rows["pt"]
    assert 1e-5 < float(rows["pt"][len(LABELS["pt"]):].split()[0]) < 1e-4


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
