"""`encdec demo` in each backend: the warm-started bert2bert learns the task (exact match on
held-out sentences rises from ~0 to at least 80%) in a fixed number of steps, the saved
checkpoint generates the same tokens in the other two backends, the command succeeds with two
CPU-bound processes beside it (fixed work, no time limit: a busy machine only makes it slower),
a model that learns nothing makes the command fail, the data is a function of the seed and the
progress bar reports steps, loss, rate and time left. Nothing here depends on the machine's
speed."""

from __future__ import annotations

import io
import os
import re
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

# The demo's default recipe and data (steps, not seconds, decide what is learnt, whatever else
# shares the machine): the exact match stays near 0 while the new cross-attention learns to
# point at the source's words, then jumps (see docs/demo.md for the curve in each backend).
STEPS = demo.Recipe().steps
BEFORE_AT_MOST = 0.05  # the untrained cross-attention: arbitrary words
AFTER_AT_LEAST = demo.MIN_ACCURACY  # 0.8: the acceptance bound of the demo (issues 13, 21)
N_EVAL = 64  # the demo's default: the same data as the runs measured in docs/demo.md
BUSY = 2  # CPU-bound processes beside the demo under load (the machine has 2 cores)

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


# pt, the default: test_cli_succeeds_beside_two_busy_processes runs the same recipe (CLI, seed
# 0) and asserts "demo OK" (>= 80%, every backend's tokens agree); a second pt run cost 6 min
@pytest.mark.slow
@pytest.mark.parametrize("framework", [f for f in demo.FRAMEWORKS if f != "pt"])
def test_demo_learns_the_task(framework, tmp_path, capsys):
    recipe = demo.Recipe(steps=STEPS)
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
def test_cli_fails_when_the_model_does_not_learn(tmp_path, capsys):
    """Two steps cannot learn the task: `encdec demo` must say so and exit 1 (in-process: the
    busy-machine test runs the command in a fresh process and checks it prints no framework
    noise)."""
    from encdec.cli import main

    out_dir = tmp_path / "d"
    code = main(["demo", "--backend", "pt", "--steps", "2", "--eval", "8", "--no-progress",
                 "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "demo FAILED: exact match 0% -> 0%" in out and "< --min-accuracy 80%" in out, out
    for label in ("encdec.tf", "encdec.flax"):
        assert any(line.strip().startswith(label) and "same tokens as encdec.pt" in line
                   for line in out.splitlines()), out
    assert (out_dir / "model.safetensors").is_file()


# tf and flax compile a train step (~10 s each): slow; pt's loop stays in the fast subset
@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.slow) if f != "pt" else f
                                       for f in demo.FRAMEWORKS])
def test_training_leaves_the_word_embeddings_alone(framework):
    """Each backend's trainer (a tiny bert2bert, two steps) changes the model's weights but
    not the two word-embedding tables the recipe freezes (the decoder's is its output layer
    too)."""
    from encdec.convert import backends
    from tests.generation.oracle import checkpoint
    from tests.harness.backends import ADAPTERS

    adapter = ADAPTERS[framework]()
    model = backends.load(framework, checkpoint("bert2bert"))
    rng = np.random.default_rng(0)
    data = {"input_ids": rng.integers(5, 99, (4, 7)), "attention_mask": np.ones((4, 7), np.int64),
            "labels": rng.integers(5, 99, (4, 5))}
    before = {n: np.array(v, copy=True) for n, v in adapter.state(model).items()}
    demo.TRAINERS[framework](model, data, demo.Recipe(steps=2, batch_size=2),
                             demo.Progress(2, False))
    after = adapter.state(model)
    frozen = {n for n in before if n.endswith("word_embeddings.weight")}
    assert len(frozen) == 2, sorted(before)
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert not changed & frozen, changed & frozen
    assert any(".crossattention." in n for n in changed) and any(n.startswith("encoder.")
                                                                 for n in changed), changed


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--eval", "-3"], "--eval must be at least 1, got -3"),
    (["--min-accuracy", "80"], "--min-accuracy must be between 0 and 1, got 80.0"),
])
def test_cli_refuses_bad_values(argv, message, capsys):
    from encdec.cli import main

    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_has_no_time_limit():
    """Fixed work: the command takes no wall-clock budget (issue 21)."""
    from encdec.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--time-limit", "100"])
    assert not hasattr(demo.Recipe(), "time_limit")


class _Pipe(io.StringIO):
    def isatty(self):
        return False


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_in_a_log():
    """Not a terminal: one line every tenth of the steps, each with steps done / total, the
    smoothed loss, the rate and the time left; the last says how long it took."""
    stream = _Pipe()
    bar = demo.Progress(20, True, stream=stream)
    for i in range(20):
        bar.update(2.0 - 0.05 * i)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10, lines
    assert "\r" not in stream.getvalue()
    assert re.search(r"\[#{2}-{18}\]  2/20 steps  loss 1\.\d{3}  [\d.]+ steps/s  ETA \d+:\d\d$",
                     lines[0]), lines[0]
    assert re.search(r"\[#{20}\] 20/20 steps  loss [\d.]+  [\d.]+ steps/s  done in \d+:\d\d$",
                     lines[-1]), lines[-1]
    assert bar.losses == [2.0 - 0.05 * i for i in range(20)]


def test_progress_bar_on_a_terminal_and_off():
    stream = _Terminal()
    bar = demo.Progress(3, True, stream=stream)
    for loss in (3.0, 2.0, 1.0):
        bar.update(loss)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1, text
    assert "3/3 steps" in text.splitlines()[-1]
    quiet = _Terminal()
    bar = demo.Progress(3, False, stream=quiet)
    bar.update(1.0)
    bar.close()
    assert quiet.getvalue() == "" and bar.losses == [1.0]


def test_clock():
    assert [demo._clock(s) for s in (0, 59.4, 61, 3599, 3600, 7325)] == [
        "0:00", "0:59", "1:01", "59:59", "1:00:00", "2:02:05"]


@pytest.mark.slow
def test_cli_succeeds_beside_two_busy_processes(tmp_path):
    """`encdec demo` as the README runs it (pt, the default recipe, the progress bar on) with
    two CPU-bound processes taking the 2 cores: it only takes longer; it exits 0 with the
    held-out exact match at least 80% and no framework noise (issue 21: with a time budget it
    stopped after 59 of 150 steps at 2%)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(BUSY)]
    try:
        # no timeout: the demo is fixed work and ends; how long it takes is the machine's
        # business (on a 2-core machine also running a dozen test processes it took over an hour)
        proc = subprocess.run([sys.executable, "-m", "encdec.cli", "demo"], cwd=tmp_path,
                              env=ENV, capture_output=True, text=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    m = re.search(r"demo OK: exact match 0% -> (\d+)% after (\d+) steps", out)
    assert m and int(m.group(1)) >= 100 * AFTER_AT_LEAST and int(m.group(2)) == STEPS, out
    assert f"{STEPS}/{STEPS} steps" in err and "done in" in err, err
    assert not any(n in out + err for n in NOISE), out + err
