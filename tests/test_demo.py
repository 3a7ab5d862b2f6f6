"""`encdec demo` in each backend, without its time limit: the warm-started bert2bert learns
the task (exact match on held-out sentences rises from ~0 to at least 80%), the saved
checkpoint generates the same tokens in the other two backends, a model that learns nothing
makes the command fail, and the data is a function of the seed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encdec import demo

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
       "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
NOISE = ("oneDNN", "absl::InitializeLog", "cuda", "TensorFlow binary is optimized", "Traceback",
         "Warning", "WARNING")

# The demo's recipe and data with no time limit (steps, not seconds, decide what is learnt,
# whatever else shares the machine). Fewer steps would not do: the exact
# match stays near 0 while the new cross-attention learns to point at the source's words,
# then jumps (measured in PyTorch: 9% after 90 steps, 94% after 120; see docs/demo.md).
STEPS = demo.Recipe().steps
BEFORE_AT_MOST = 0.05  # the untrained cross-attention: arbitrary words
AFTER_AT_LEAST = 0.80  # the acceptance bound of the demo (issue 13)
N_EVAL = 64  # the demo's default: the same data as the runs measured in docs/demo.md

def test_data_is_deterministic_and_held_out_is_unseen():
    train, held_out = demo.make_data(3, 200, 20)
    assert (train, held_out) == demo.make_data(3, 200, 20)
    assert demo.make_data(4, 200, 20) != (train, held_out)
    assert not set(train) & set(held_out) and len(set(held_out)) == 20
    for s in held_out:
        target = demo.content_words(s)
        assert target and not set(target.split()) & demo.FUNCTION_WORDS
        assert 5 <= len(s.split()) <= 10


def test_encoding_is_one_token_per_word():
    vocab = demo.Vocab.load(demo.minilm_dir())
    _, held_out = demo.make_data(0, 0, 8)
    data = vocab.encode(held_out)
    for i, s in enumerate(held_out):
        n = len(s.split())
        assert data["attention_mask"][i].sum() == n + 2  # [CLS] words [SEP]
        labels = data["labels"][i][data["labels"][i] != -100]
        assert labels[-1] == vocab.sep
        assert vocab.decode(labels[None])[0] == demo.content_words(s)


@pytest.mark.slow
@pytest.mark.parametrize("framework", demo.FRAMEWORKS)
def test_demo_learns_the_task(framework, tmp_path, capsys):
    recipe = demo.Recipe(steps=STEPS, time_limit=math.inf)
    result = demo.run(framework, recipe, seed=0, n_eval=N_EVAL, out=tmp_path, progress=False,
                      min_accuracy=AFTER_AT_LEAST)
    out = capsys.readouterr().out
    assert result.steps == STEPS
    assert np.isfinite(result.losses).all()
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) / 4, result.losses
    assert result.before <= BEFORE_AT_MOST, out
    assert result.after >= AFTER_AT_LEAST, out
    assert result.agree == {f: True for f in demo.FRAMEWORKS}, out
    assert result.ok
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()


@pytest.mark.slow
def test_cli_fails_when_the_model_does_not_learn(tmp_path):
    """Two steps cannot learn the task: `encdec demo` must say so and exit 1, and print no
    framework noise on the way (the progress bar is off: stderr stays empty)."""
    argv = [sys.executable, "-m", "encdec.cli", "demo", "--backend", "pt", "--steps", "2",
            "--eval", "8", "--no-progress", "--out", str(tmp_path / "d")]
    proc = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "demo FAILED: exact match 0% -> 0%" in out and "< --min-accuracy 50%" in out, out
    for label in ("encdec.tf", "encdec.flax"):
        assert any(line.strip().startswith(label) and "same tokens as encdec.pt" in line
                   for line in out.splitlines()), out
    assert not any(n in out + proc.stderr for n in NOISE), out + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert (tmp_path / "d" / "model.safetensors").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--eval", "-3"], "--eval must be at least 1, got -3"),
    (["--time-limit", "0"], "--time-limit must be positive, got 0.0"),
    (["--min-accuracy", "80"], "--min-accuracy must be between 0 and 1, got 80.0"),
])
def test_cli_refuses_bad_values(argv, message, capsys):
    from encdec.cli import main

    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err
