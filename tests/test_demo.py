"""`encdec demo`: the README's command learns the task (held-out exact match from ~0 to at least
80%) in a fixed number of steps and the saved checkpoint generates the same tokens in the other
two backends, also with two other CPU-bound processes on the 2-core machine; the three
backends' trainers take the same steps; the run has no time limit (a clock that jumps an hour
per reading changes nothing); a model that learns nothing makes the
command fail; the data is a function of the seed; the progress bar reports steps, loss, rate and
time left. Nothing here depends on the machine's speed."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encdec import demo
from encdec.convert import backends
from tests.tolerances import FORWARD, TRAIN_STEPS, assert_close

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
def test_cli_fails_when_the_model_does_not_learn(tmp_path, capsys, monkeypatch):
    """Two steps cannot learn the task: `encdec demo` must say so and exit 1. The clock runs an
    hour per reading and nothing changes: every step is still taken (fixed work, no time
    limit; issue 21: with a time budget a busy machine stopped it after 59 of 150 steps)."""
    from encdec.cli import main

    hours = iter(range(0, 10**9, 3600))
    monkeypatch.setattr(demo.time, "perf_counter", lambda: float(next(hours)))
    out_dir = tmp_path / "d"
    code = main(["demo", "--backend", "pt", "--steps", "2", "--eval", "8", "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 1, out
    assert "demo FAILED: exact match 0% -> 0% after 2 steps" in out, out
    assert "< --min-accuracy 80%" in out, out
    assert "2/2 steps" in err and "done in" in err, err
    for label in ("encdec.tf", "encdec.flax"):
        assert any(line.strip().startswith(label) and "same tokens as encdec.pt" in line
                   for line in out.splitlines()), out
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file()


def _without_dropout(directory: str, out: Path) -> Path:
    config = json.loads((Path(directory) / "config.json").read_text())
    for side in ("encoder", "decoder"):
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            config[side][key] = 0.0
    shutil.copytree(directory, out)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.slow  # a Keras fit and an nnx.jit step compile (~10 s each)
def test_the_three_trainers_take_the_same_steps(tmp_path):
    """The demo's trainers (torch AdamW, Keras `fit`, optax under `nnx.jit`) on one tiny
    bert2bert without dropout and the same batches: the same loss at every step and the same
    weights after, the two word-embedding tables the recipe freezes unchanged (the decoder's is
    its output layer too). With the README's pt run learning the task
    (`test_readme_command_on_a_busy_machine`), this is why tf and flax learn it too (their full
    runs: docs/demo.md)."""
    from tests.generation.oracle import checkpoint
    from tests.harness.backends import ADAPTERS

    directory = _without_dropout(checkpoint("bert2bert"), tmp_path / "ckpt")
    recipe = demo.Recipe(steps=4, batch_size=2)
    rng = np.random.default_rng(0)
    n = recipe.steps * recipe.batch_size
    data = {"input_ids": rng.integers(5, 99, (n, 7)), "attention_mask": np.ones((n, 7), np.int64),
            "labels": rng.integers(5, 99, (n, 5))}
    losses, weights = {}, {}
    for framework in demo.FRAMEWORKS:
        adapter = ADAPTERS[framework]()
        model = backends.load(framework, directory)
        before = {k: np.array(v, copy=True) for k, v in adapter.state(model).items()}
        bar = demo.Progress(recipe.steps, False)
        demo.TRAINERS[framework](model, data, recipe, bar)
        losses[framework], weights[framework] = bar.losses, adapter.state(model)
        frozen = {k for k in before if k.endswith("word_embeddings.weight")}
        assert len(frozen) == 2, sorted(before)
        changed = {k for k in before if not np.array_equal(before[k], weights[framework][k])}
        assert not changed & frozen, (framework, changed & frozen)
        assert any(".crossattention." in k for k in changed), (framework, changed)
        assert any(k.startswith("encoder.") for k in changed), (framework, changed)
    assert len(losses["pt"]) == recipe.steps and losses["pt"][-1] < losses["pt"][0], losses
    for framework in ("tf", "flax"):
        assert_close(losses[framework], losses["pt"], FORWARD * 10, f"{framework} losses")
        for k, w in weights["pt"].items():
            assert_close(weights[framework][k], w, TRAIN_STEPS, f"{framework} {k}")


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


def _busy_processes() -> int:
    """CPU-bound processes to start so that two run beside the demo on the 2-core machine
    (issue 21): under xdist the other worker is one of them."""
    return max(0, 2 - (int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) - 1))


@pytest.mark.slow
def test_readme_command_on_a_busy_machine(tmp_path):
    """`encdec demo` as the README runs it (a fresh process, pt, the default recipe, the
    progress bar on) with two other CPU-bound processes on the 2-core machine: it only takes
    longer. It exits 0 with the held-out exact match at least 80% after every step, the three
    backends generate the same tokens, and it prints no framework noise. (It has no time limit
    at all: `test_cli_fails_when_the_model_does_not_learn` runs it on a clock that jumps an hour
    per reading.)"""
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"])
            for _ in range(_busy_processes())]
    try:
        # XLA at its default optimisation level, as a user runs it (tests/conftest.py lowers it)
        flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
        # no timeout: fixed work ends; how long it takes is the machine's business
        proc = subprocess.run([sys.executable, "-m", "encdec.cli", "demo"], cwd=tmp_path,
                              env={**ENV, "XLA_FLAGS": flags}, capture_output=True, text=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    m = re.search(r"demo OK: exact match (\d+)% -> (\d+)% after (\d+) steps", out)
    assert m, out
    assert int(m.group(1)) <= 100 * BEFORE_AT_MOST, out
    assert int(m.group(2)) >= 100 * AFTER_AT_LEAST and int(m.group(3)) == STEPS, out
    assert "the three backends agree" in out, out
    assert f"{STEPS}/{STEPS} steps" in err and "done in" in err, err
    assert not any(n in out + err for n in NOISE), out + err
