"""The XLA exports, written once for both: TensorFlow's SavedModel (`encdec.tf.export`) and the
serialized JAX program (`encdec.flax.export`). Each artefact, run by its `run.py` in a fresh
process that imports its framework and numpy but never encdec (for JAX, encdec, flax, torch
and tensorflow are blocked there), gives the tokens of encdec pt's `generate` on the same
checkpoint — greedy, and 4-beam with no_repeat_ngram_size and repetition_penalty — on
padded batches of 1 and 3; a corrupt or mismatched artefact and bad inputs fail with an error
naming the file or the argument.

Artefacts are exported once per (format, pair, setting) per session (shared by the xdist
workers through a locked directory) and shared by the module's tests. Each fresh process pays a
framework import and an XLA compilation per artefact (15-30 s on the CI machine), so the token
matrix is a covering design (each decoder family once, each setting at least once) and all of
a format's cases run in ONE fresh process, every artefact through its own `run.py`'s `main`;
the public `run_exported` on greedy bert2bert and the ONNX tokens stay in the fast subset.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from tests.conftest import session_dir
from tests.export.conftest import BATCH_SIZES, SETTINGS, inputs, pt_model, pt_tokens
from tests.generation.oracle import batch, checkpoint

# runs run.py with encdec and the other frameworks unimportable: the artefact needs JAX only
_BLOCKED_RUN = r"""
import importlib.abc, runpy, sys
BLOCKED = ("encdec", "flax", "torch", "tensorflow", "keras", "transformers")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this process")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not leaked, leaked
"""


@dataclass(frozen=True)
class Format:
    """What differs between the two XLA exports."""

    backend: str  # the encdec backend that exports it
    program: str  # the artefact's compiled program
    weights: str  # ... and its weights
    runner: tuple[str, ...]  # the fresh process's command before run.py
    other: str  # another backend's format, which this backend's `export` refuses

    def export_module(self):
        return importlib.import_module(f"encdec.{self.backend}.export")


FORMATS = {
    "saved_model": Format("tf", "saved_model/saved_model.pb",
                          "saved_model/variables/variables.data-00000-of-00001",
                          (sys.executable,), "onnx"),
    "jax": Format("flax", "generate.jax_export", "params.npz",
                  (sys.executable, "-c", _BLOCKED_RUN), "saved_model"),
}
FMTS = list(FORMATS)


@functools.cache
def model(fmt: str, name: str):
    """The exporting backend's model of pair `name` (loaded once)."""
    backend = importlib.import_module(f"encdec.{FORMATS[fmt].backend}")
    return backend.EncoderDecoderModel.from_pretrained(checkpoint(name))


# One decoder family each (BERT, GPT-2, BART) and both search loops: greedy and beams with
# processors (plain beam search's code path, plus the processors inside the program; bert2gpt2's
# through the glue, `EncoderDecoderModel.export`, which verifies it). RoBERTa's encoder and the full
# pair x setting product are in the ONNX matrix (tests/export/test_onnx.py), and every pair's
# tokens in each backend in tests/harness.
CASES = (("bert2bert", "greedy"), ("bert2gpt2", "beam4_processors"),
         ("bert2bart", "beam4_processors"))
GLUE = ("bert2gpt2", "beam4_processors")  # exported by `EncoderDecoderModel.export`


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(format, pair, setting) -> the export's directory, exported on first use in the session
    (under a lock, so another xdist worker waits for it and reuses it). GLUE's is
    `<root>/glue-<format>/out`, written by `EncoderDecoderModel.export`."""
    root = session_dir(tmp_path_factory, "xla-exports")

    def get(fmt: str, name: str, setting: str) -> Path:
        if (name, setting) == GLUE:
            done = root / f"glue-{fmt}" / "out"
        else:
            done = root / f"{fmt}-{name}-{setting}"
        with FileLock(str(root / f"{fmt}-{name}-{setting}.lock")):
            if not done.is_dir():
                if (name, setting) == GLUE:  # atomic itself: `done` appears once verified
                    model(fmt, name).export(done, **SETTINGS[setting])
                else:
                    tmp = root / f"{done.name}.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    FORMATS[fmt].export_module().export(model(fmt, name), tmp,
                                                        **SETTINGS[setting])
                    os.replace(tmp, done)
        return done

    return get


# runs each artefact's own run.py `main` (its CLI: manifest, input checks, load, run, write)
# on its batches, all artefacts in this one process
_DRIVER = r"""
import importlib.util, json, sys
for i, (script, ins, outs) in enumerate(json.load(open(sys.argv[1]))):
    spec = importlib.util.spec_from_file_location(f"encdec_export_run_{i}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--in", *ins, "--out", *outs])
    if code != 0:
        sys.exit(f"{script}: exit {code}")
"""


def _fresh_run(fmt: str, jobs: list[tuple[Path, list]]) -> list[list[np.ndarray]]:
    """Every (directory, batches) job through `directory/run.py`'s `main`, all in ONE fresh
    Python process (one framework import); its cwd is a temporary directory, outside the
    repository. The tokens, per job and batch."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, outs = [], []
        for j, (directory, batches) in enumerate(jobs):
            ins = [os.path.join(tmp, f"in{j}-{i}.npz") for i in range(len(batches))]
            outs.append([os.path.join(tmp, f"out{j}-{i}.npz") for i in range(len(batches))])
            for path, (ids, mask) in zip(ins, batches, strict=True):
                np.savez(path, input_ids=ids, attention_mask=mask)
            spec.append((str(directory / "run.py"), ins, outs[-1]))
        Path(tmp, "jobs.json").write_text(json.dumps(spec))
        Path(tmp, "driver.py").write_text(_DRIVER)
        r = subprocess.run([*FORMATS[fmt].runner, os.path.join(tmp, "driver.py"),
                            os.path.join(tmp, "jobs.json")], capture_output=True, text=True,
                           cwd=tmp, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
        assert r.stderr == "", r.stderr[-4000:]  # no framework noise
        result = []
        for paths in outs:
            result.append([])
            for path in paths:
                with np.load(path) as out:
                    result[-1].append(out["tokens"])
        return result


def test_blocked_imports_are_really_blocked(tmp_path):
    """The JAX fresh-process harness would catch a runner that imports encdec."""
    script = tmp_path / "run.py"
    script.write_text("import encdec\n")
    r = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(script)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "encdec is blocked" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FMTS)
def test_tokens_equal_pt_generate(exports, fmt):
    """Every case of CASES on padded batches of 1 and 3 (and, greedy bert2bert, a longer
    source: another length bucket), all in one fresh process, equal encdec pt's tokens."""
    jobs = []
    for name, setting in CASES:
        batches = [inputs(name, size) for size in BATCH_SIZES]
        if (name, setting) == ("bert2bert", "greedy"):
            batches.append(batch(seed=2, size=3, src_len=40, name=name))
        jobs.append((exports(fmt, name, setting), batches))
    got = _fresh_run(fmt, jobs)
    for (name, setting), (_, batches), tokens_of in zip(CASES, jobs, got, strict=True):
        for (ids, mask), tokens in zip(batches, tokens_of, strict=True):
            want = pt_model(name).generate(ids, mask, **SETTINGS[setting]).numpy()
            assert tokens.shape == want.shape and np.array_equal(tokens, want), (
                name, setting, ids, tokens, want)
            assert tokens.shape[1] > 2  # something was generated


# the SavedModel's in CI: the same manifest writer as the JAX and ONNX exports' (fast)
@pytest.mark.parametrize("fmt", [pytest.param("saved_model", marks=pytest.mark.slow), "jax"])
def test_manifest(exports, fmt):
    import encdec

    directory = exports(fmt, "bert2bert", "greedy")
    manifest = json.loads((directory / "export.json").read_text())
    assert manifest["format"] == fmt
    assert manifest["encdec_version"] == encdec.__version__
    assert manifest["model_types"] == {"encoder": "bert", "decoder": "bert"}
    assert manifest["inputs"] == {"input_ids": "int32", "attention_mask": "int32"}
    assert manifest["generation"]["max_new_tokens"] == SETTINGS["greedy"]["max_new_tokens"]
    files = set(manifest["files"])
    assert {"run.py", FORMATS[fmt].program, FORMATS[fmt].weights} <= files
    if fmt == "saved_model":
        assert manifest["saved_model"]["source_buckets"] == [16, 32, 64]
    else:
        assert files == {"run.py", "generate.jax_export", "params.npz"}
        assert manifest["jax"]["platforms"] == ["cpu"]
        with np.load(directory / "params.npz", allow_pickle=False) as params:
            assert len(params.files) == manifest["jax"]["num_params"] > 0
            assert all(params[k].dtype == np.float32 for k in params.files)


@pytest.mark.parametrize("fmt", FMTS)
def test_run_exported_in_fresh_process(exports, fmt):
    """The public `run_exported` (one fresh process per call) on the batch of 3."""
    ids, mask = inputs("bert2bert", 3)
    np.testing.assert_array_equal(
        FORMATS[fmt].export_module().run_exported(exports(fmt, "bert2bert", "greedy"), ids,
                                                  mask),
        pt_tokens("bert2bert", "greedy", 3))


@pytest.mark.parametrize(("fmt", "damage"), [
    ("saved_model", "garbled"), ("jax", "garbled"),
    *(pytest.param(f, d, marks=pytest.mark.slow) for f in FMTS for d in ("missing", "swapped")),
    pytest.param("jax", "other_model", marks=pytest.mark.slow)])
def test_corrupt_artefact_names_the_file(exports, tmp_path, fmt, damage):
    from encdec.export import ExportError

    spec = FORMATS[fmt]
    bad = Path(shutil.copytree(exports(fmt, "bert2bert", "greedy"), tmp_path / "copy"))
    target = spec.weights
    if damage == "garbled":
        data = bytearray((bad / target).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / target).write_bytes(bytes(data))
    elif damage == "missing":
        (bad / target).unlink()
    elif damage == "swapped":  # the program of another export in place of this one's
        target = spec.program
        shutil.copy(exports(fmt, "bert2bart", "beam4_processors") / target, bad / target)
    else:  # another model's program with its hash: the program does not fit the weights
        target, other = spec.program, exports(fmt, *GLUE)
        shutil.copy(other / target, bad / target)
        manifest = json.loads((bad / "export.json").read_text())
        manifest["files"][target] = json.loads(
            (other / "export.json").read_text())["files"][target]
        (bad / "export.json").write_text(json.dumps(manifest))
    ids, mask = inputs("bert2bert", 1)
    with pytest.raises(ExportError, match=target.replace(".", r"\.")):
        spec.export_module().run_exported(bad, ids, mask)


@pytest.mark.parametrize("fmt", FMTS)
def test_bad_inputs_name_the_argument(exports, fmt):
    from encdec.export import ExportError

    run_exported = FORMATS[fmt].export_module().run_exported
    directory = exports(fmt, "bert2bert", "greedy")
    ids, mask = inputs("bert2bert", 1)
    with pytest.raises(ExportError, match=r"input_ids: id 99 is outside \[0, 99\)"):
        run_exported(directory, np.full_like(ids, 99), mask)
    long = np.ones((1, 65), np.int64)
    with pytest.raises(ExportError, match="input_ids: length 65 exceeds .* limit 64"):
        run_exported(directory, long, long)
    with pytest.raises(ExportError, match="attention_mask: shape"):
        run_exported(directory, ids, mask[:, :-1])


@pytest.mark.parametrize("fmt", FMTS)
def test_export_rejects_sampling_and_bad_settings(tmp_path, fmt):
    export = FORMATS[fmt].export_module().export
    with pytest.raises(ValueError, match="do_sample"):
        export(model(fmt, "bert2bert"), tmp_path / "a", do_sample=True, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_length"):
        export(model(fmt, "bert2bert"), tmp_path / "b", max_new_tokens=1000)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FMTS)
def test_model_export_verifies_in_a_fresh_process(exports, fmt):
    """`EncoderDecoderModel.export`: the glue exports to a temporary directory, checks the
    artefact's tokens against the model's own generate on batches of 1 and 3 in fresh
    processes (`run_exported`), and moves it into place. (Its artefact, GLUE, is in CASES:
    test_tokens_equal_pt_generate checks its tokens against encdec pt's.)"""
    out = exports(fmt, *GLUE)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == fmt
    assert {k: manifest["generation"][k] for k in SETTINGS[GLUE[1]]} == SETTINGS[GLUE[1]]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.parametrize("fmt", FMTS)
def test_model_export_refuses_another_backends_format(tmp_path, fmt):
    from encdec.export import ExportError

    other = FORMATS[fmt].other
    with pytest.raises(ExportError, match=f"format='{other}' is exported from the"):
        model(fmt, "bert2bert").export(tmp_path / "out", format=other)
    assert not (tmp_path / "out").exists()
