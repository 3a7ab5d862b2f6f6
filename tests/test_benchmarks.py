"""The benchmarks' smoke tests (`--tiny`, every backend, in a subprocess as a user runs them):
they run, print a row per setting, and their correctness columns hold — generated tokens equal
to transformers', the first training step's loss equal to transformers' within the benchmark's
bound and the parameters after it close to the reference's, bf16 logits within the tests'
bound of fp32.

Each script pays the imports of every framework and an XLA compilation per setting, so the
smoke runs are narrowed to a covering set: generate on bert2gpt2 (the GPT-2 branch of the
shared builder) at batch 1, greedy (the onnx row) and 2 beams; bf16 and train on bert2bert
(the BERT branch); train with one timed step and no warm-up (the correctness columns come from
the first step). Every pair's tokens and bf16 logits in each backend are in tests/harness and
tests/test_bf16.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # TF and Flax compile every setting: minutes on 2 cores


def run(script: str, *options: str) -> str:
    r = subprocess.run([sys.executable, f"benchmarks/{script}", "--tiny", *options], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def rows(stdout: str) -> list[list[str]]:
    """The table rows of the benchmark's markdown output, as lists of cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| backend")]


def test_generate_benchmark_tiny():
    out = run("generate.py", "--models", "bert2gpt2", "--batches", "1", "--beams", "1,2")
    assert "matrix-vector bandwidth" in out and "floor" in out
    assert "## bert2gpt2" in out and "## bert2bert" not in out, out
    table = rows(out)
    count = {b: sum(r[0] == b for r in table) for b in ("ref", "pt", "tf", "flax", "onnx")}
    # 1 model x batch 1 x (greedy, 2 beams); onnx at batch 1 greedy only
    assert count == dict(ref=2, pt=2, tf=2, flax=2, onnx=1), out
    assert sorted((r[0], r[2]) for r in table) == sorted(
        [(b, beams) for b in ("ref", "pt", "tf", "flax") for beams in ("1", "2")]
        + [("onnx", "1")]), out
    assert all(r[-1] == "yes" for r in table), out  # same tokens as the reference


def test_train_benchmark_tiny():
    out = run("train.py", "--steps", "1", "--warmup", "0")
    table = {r[0]: r for r in rows(out)}
    assert sorted(table) == sorted(["ref", "pt", "tf-step", "tf-fit", "flax"]), out
    header = next(line for line in out.splitlines() if line.startswith("| backend"))
    col = {name.strip(): i for i, name in enumerate(header.strip().strip("|").split("|"))}
    for r in table.values():
        assert float(r[col["ms/step"]]) > 0, out
        assert r[col["same loss"]] == "yes", out
        assert float(r[col["loss rel diff"]]) <= 1e-4, out
        # after one step from the same weights, every parameter within 1% of a step (lr) of
        # the reference's (tf-fit too: the embeddings' gradients are dense, as torch's)
        assert float(r[col["in lr"]]) <= 0.01, out


def test_bf16_benchmark_tiny():
    from tests.tolerances import BF16_LOGITS

    out = run("bf16.py", "--models", "bert2bert")
    table = [r for r in rows(out) if r[0] not in ("model", "kernel")]
    models = [r for r in table if r[0] in ("bert2bert", "bert2gpt2")]
    assert sorted((r[0], r[1]) for r in models) == sorted(
        ("bert2bert", b) for b in ("pt", "tf", "flax")), out
    for r in models:  # bf16 differs from fp32, within the tests' bound
        assert 0 < float(r[2]) <= BF16_LOGITS, out
    kernels = {r[0] for r in table} - {"bert2bert", "bert2gpt2"}
    assert kernels == {"torch F.linear", "tf.matmul (XLA)", "jnp.dot (XLA)"}, out
