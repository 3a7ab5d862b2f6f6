"""TensorFlow SavedModel export (`encdec.tf.export`): the artefact, run by its `run.py` in a
fresh process that imports tensorflow and numpy but never encdec, gives the tokens of encdec
pt's `generate` on the same checkpoint — greedy, 4-beam, and 4-beam with no_repeat_ngram_size
and repetition_penalty — on padded batches of 1 and 3; a corrupt or mismatched artefact and bad
inputs fail with an error naming the file or the argument.

Artefacts are exported once per (pair, setting) and shared by the module's tests. Each fresh
process pays tensorflow's import and one XLA compilation (~30 s on the CI machine), so both
batches run in one process and only bert2bert's greedy and beam cases stay in the fast subset.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.export.conftest import BATCH_SIZES, SETTINGS, cases, inputs, pt_model, pt_tokens
from tests.generation.oracle import batch, checkpoint


@functools.lru_cache(maxsize=None)
def _tf_model(name: str):
    import encdec.tf

    return encdec.tf.EncoderDecoderModel.from_pretrained(checkpoint(name))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(pair, setting) -> the export's directory, exported from encdec tf on first use."""
    from encdec.tf.export import export

    root, done = tmp_path_factory.mktemp("saved_model"), {}

    def get(name: str, setting: str) -> Path:
        if (name, setting) not in done:
            done[name, setting] = export(_tf_model(name), root / f"{name}-{setting}",
                                         **SETTINGS[setting])
        return done[name, setting]

    return get


def _fresh_run(directory: Path, batches) -> list[np.ndarray]:
    """Every batch through `directory/run.py`, in ONE fresh Python process (one tensorflow
    import, one XLA compilation); its cwd is a temporary directory, outside the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        ins, outs = [], []
        for i, (ids, mask) in enumerate(batches):
            ins.append(os.path.join(tmp, f"in{i}.npz"))
            outs.append(os.path.join(tmp, f"out{i}.npz"))
            np.savez(ins[-1], input_ids=ids, attention_mask=mask)
        r = subprocess.run([sys.executable, str(directory / "run.py"), "--in", *ins,
                            "--out", *outs], capture_output=True, text=True, cwd=tmp,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        assert r.stderr == "", r.stderr[-4000:]  # no framework noise
        result = []
        for path in outs:
            with np.load(path) as out:
                result.append(out["tokens"])
        return result


# in-process tokens: CI (the fresh-process run of `run_exported` on greedy bert2bert and
# the ONNX tokens stay fast)
@pytest.mark.parametrize(("name", "setting"), cases(fast=()))
def test_tokens_equal_pt_generate(exports, name, setting):
    batches = [inputs(name, size) for size in BATCH_SIZES]
    if (name, setting) == ("bert2bert", "greedy"):  # a longer source: another length bucket
        batches.append(batch(seed=2, size=3, src_len=40, name=name))
    got = _fresh_run(exports(name, setting), batches)
    for (ids, mask), tokens in zip(batches, got, strict=True):
        want = pt_model(name).generate(ids, mask, **SETTINGS[setting]).numpy()
        assert tokens.shape == want.shape and np.array_equal(tokens, want), (ids, tokens, want)
        assert tokens.shape[1] > 2  # something was generated


@pytest.mark.slow  # the same manifest writer as test_onnx.py's (fast)
def test_manifest(exports):
    import encdec

    directory = exports("bert2bert", "greedy")
    manifest = json.loads((directory / "export.json").read_text())
    assert manifest["format"] == "saved_model"
    assert manifest["encdec_version"] == encdec.__version__
    assert manifest["model_types"] == {"encoder": "bert", "decoder": "bert"}
    assert manifest["inputs"] == {"input_ids": "int32", "attention_mask": "int32"}
    assert manifest["generation"]["max_new_tokens"] == SETTINGS["greedy"]["max_new_tokens"]
    assert {"run.py", "saved_model/saved_model.pb"} <= set(manifest["files"])
    assert manifest["saved_model"]["source_buckets"] == [16, 32, 64]
    assert any(f.startswith("saved_model/variables/") for f in manifest["files"])


def test_run_exported_in_fresh_process(exports):
    """The public `run_exported` (one fresh process per call) on the batch of 3."""
    from encdec.tf.export import run_exported

    ids, mask = inputs("bert2bert", 3)
    np.testing.assert_array_equal(run_exported(exports("bert2bert", "greedy"), ids, mask),
                                  pt_tokens("bert2bert", "greedy", 3))


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / "copy"))


@pytest.mark.parametrize("damage", ["garbled", *(pytest.param(d, marks=pytest.mark.slow)
                                                  for d in ("missing", "swapped"))])
def test_corrupt_artefact_names_the_file(exports, tmp_path, damage):
    from encdec.export import ExportError
    from encdec.tf.export import run_exported

    bad = _copy(exports("bert2bert", "greedy"), tmp_path)
    target = "saved_model/variables/variables.data-00000-of-00001"
    if damage == "garbled":
        data = bytearray((bad / target).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / target).write_bytes(bytes(data))
    elif damage == "missing":
        (bad / target).unlink()
    else:  # the graph of another model (another pair) in place of this one's
        target = "saved_model/saved_model.pb"
        other = exports("bert2bert", "beam4")
        shutil.copy(other / target, bad / target)
    ids, mask = inputs("bert2bert", 1)
    with pytest.raises(ExportError, match=target.replace(".", r"\.")):
        run_exported(bad, ids, mask)


def test_bad_inputs_name_the_argument(exports):
    from encdec.export import ExportError
    from encdec.tf.export import run_exported

    directory = exports("bert2bert", "greedy")
    ids, mask = inputs("bert2bert", 1)
    with pytest.raises(ExportError, match=r"input_ids: id 99 is outside \[0, 99\)"):
        run_exported(directory, np.full_like(ids, 99), mask)
    long = np.ones((1, 65), np.int64)
    with pytest.raises(ExportError, match="input_ids: length 65 exceeds .* limit 64"):
        run_exported(directory, long, long)
    with pytest.raises(ExportError, match="attention_mask: shape"):
        run_exported(directory, ids, mask[:, :-1])


def test_export_rejects_sampling_and_bad_settings(tmp_path):
    from encdec.tf.export import export

    model = _tf_model("bert2bert")
    with pytest.raises(ValueError, match="do_sample"):
        export(model, tmp_path / "a", do_sample=True, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_length"):
        export(model, tmp_path / "b", max_new_tokens=1000)


@pytest.mark.slow
def test_model_export_verifies_in_a_fresh_process(tmp_path):
    """`EncoderDecoderModel.export` (tf): the glue exports to a temporary directory, checks the
    artefact's tokens against the model's own generate on batches of 1 and 3 in fresh
    processes, and moves it into place."""
    out = _tf_model("bert2bert").export(tmp_path / "out", **SETTINGS["beam4"])
    assert json.loads((Path(out) / "export.json").read_text())["format"] == "saved_model"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    got = _fresh_run(Path(out), [inputs("bert2bert", 3)])[0]
    np.testing.assert_array_equal(got, pt_tokens("bert2bert", "beam4", 3))


def test_model_export_refuses_another_backends_format(tmp_path):
    from encdec.export import ExportError

    with pytest.raises(ExportError, match="format='onnx' is exported from the pt backend"):
        _tf_model("bert2bert").export(tmp_path / "out", format="onnx")
    assert not (tmp_path / "out").exists()
