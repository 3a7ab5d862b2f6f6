"""ONNX export (encdec.pt.export) and its numpy/onnxruntime runtime (encdec.onnx): tokens
identical to encdec pt's generate in a fresh process, the cached decoder step against a full
decoder pass, corrupt and mismatched artefacts, the framework-free runtime, the glue."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from encdec.export import ExportError, export_model
from encdec.pt import export as pt_export
from tests.conftest import PAIRS
from tests.export.conftest import (
    BATCH_SIZES,
    EXPORT_PAIRS,
    SETTINGS,
    cases,
    inputs,
    pt_model,
    pt_tokens,
)
from tests.tolerances import CACHE, assert_close


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(name, setting)` -> directory of the pair's export (one per module)."""
    cache = {}

    def make(name: str, setting: str):
        if (name, setting) not in cache:
            d = tmp_path_factory.mktemp(f"onnx-{name}-{setting}")
            cache[name, setting] = pt_export.export(pt_model(name), d, **SETTINGS[setting])
        return cache[name, setting]

    return make


@pytest.mark.parametrize(("name", "setting"), cases(fast={("bert2bert", "greedy")}))
def test_tokens_in_fresh_process_equal_pt_generate(exported, name, setting):
    d = exported(name, setting)
    for size in BATCH_SIZES:
        ids, mask = inputs(name, size)
        got = pt_export.run_exported(d, ids, mask)
        want = pt_tokens(name, setting, size)
        assert got.shape == want.shape and np.array_equal(got, want), (size, got, want)


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "bert2bart"])
def test_decoder_step_with_cache_equals_full_decoder_pass(exported, name):
    from encdec.onnx import load

    model, om = pt_model(name), load(exported(name, "greedy"))
    ids, mask = inputs(name, 3)
    dec_ids = np.random.default_rng(0).integers(4, 99, (3, 6))
    dec_ids[:, 0] = 2
    with torch.no_grad():
        full = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                     decoder_input_ids=torch.as_tensor(dec_ids)).logits.numpy()  # (B, T, V)
    cross = om.encode(ids, mask)[1:]
    selfs = [np.zeros((3, om.heads, dec_ids.shape[1], om.head_dim), np.float32)
             for _ in range(2 * om.layers)]
    steps = []
    for t in range(dec_ids.shape[1]):
        logits, selfs = om.step(dec_ids[:, t], t, mask, selfs, cross)
        steps.append(logits)
    assert_close(np.stack(steps, 1), full, CACHE, f"{name}: ONNX cached steps vs full pass")


def test_beam_rows_share_cross_kv_and_overrides(exported):
    """The runtime's own generate (in process) with overridden settings equals pt."""
    from encdec.onnx import load

    om = load(exported("bert2bert", "greedy"))
    ids, mask = inputs("bert2bert", 3)
    kw = dict(max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.7)
    want = pt_model("bert2bert").generate(ids, mask, **kw).numpy()
    assert np.array_equal(om.generate(ids, mask, **kw), want)


def _copy(src, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(src, d)
    return d


def test_corrupt_file_is_named(exported, tmp_path):
    from encdec.onnx import load

    d = _copy(exported("bert2bert", "greedy"), tmp_path)
    data = bytearray((d / "decoder_step.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "decoder_step.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"decoder_step\.onnx.*sha256"):
        load(d)


def test_missing_file_is_named(exported, tmp_path):
    from encdec.onnx import load

    d = _copy(exported("bert2bert", "greedy"), tmp_path)
    (d / "encoder.onnx").unlink()
    with pytest.raises(ExportError, match=r"encoder\.onnx: missing"):
        load(d)
    (d / "export.json").write_text("{not json")
    with pytest.raises(ExportError, match=r"export\.json: not a valid"):
        load(d)


def test_graph_from_another_model_is_named(exported, tmp_path):
    """A graph copied in from another export, with export.json's hash updated to match."""
    from encdec.export import sha256
    from encdec.onnx import load

    d = _copy(exported("bert2bert", "greedy"), tmp_path)
    shutil.copy(exported("bert2gpt2", "greedy") / "decoder_step.onnx", d / "decoder_step.onnx")
    m = json.loads((d / "export.json").read_text())
    m["files"]["decoder_step.onnx"] = sha256(d / "decoder_step.onnx")
    (d / "export.json").write_text(json.dumps(m))
    with pytest.raises(ExportError, match=r"decoder_step\.onnx: a graph from another export"):
        load(d)
    (d / "export.json").write_text(json.dumps({**m, "format": "jax"}))
    with pytest.raises(ExportError, match=r"format 'jax', expected 'onnx'"):
        load(d)


def test_runtime_imports_no_training_framework(exported):
    blocked = ("torch", "tensorflow", "jax", "jaxlib", "flax", "keras", "transformers")
    code = (
        "import importlib.abc, sys\n"
        f"B = {blocked!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in B: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, encdec.onnx\n"
        f"m = encdec.onnx.load({str(exported('bert2bert', 'greedy'))!r})\n"
        "m.generate(np.array([[5, 6, 7]]), np.array([[1, 1, 1]]))\n"
        "leaked = sorted(k for k in sys.modules if k.split('.')[0] in B)\n"
        "assert not leaked, leaked\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_export_model_verifies_and_is_atomic(tmp_path, monkeypatch):
    model = pt_model("bert2bert")
    out = export_model(model, tmp_path / "out", "onnx", max_new_tokens=4)
    assert json.loads((out / "export.json").read_text())["generation"]["max_new_tokens"] == 4
    # a mismatch between the artefact and generate fails and leaves nothing behind
    real = type(model).generate
    monkeypatch.setattr(type(model), "generate",
                        lambda self, *a, **k: real(self, *a, **k)[:, :-1])
    with pytest.raises(ExportError, match="verification failed"):
        export_model(model, tmp_path / "bad", "onnx", max_new_tokens=4)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bad")] == []


def test_export_model_bad_requests(tmp_path):
    model = pt_model("bert2bert")
    with pytest.raises(ExportError, match="format='saved_model' is exported from the tf"):
        export_model(model, tmp_path / "x", "saved_model")
    with pytest.raises(ExportError, match="format='tflite'"):
        export_model(model, tmp_path / "x", "tflite")
    with pytest.raises(ValueError, match="num_beams"):
        export_model(model, tmp_path / "x", "onnx", num_beams=0)
    assert not (tmp_path / "x").exists()


def test_cli_export(tmp_path, capsys):
    from encdec.cli import main
    from tests.generation.oracle import checkpoint

    out = tmp_path / "onnx"
    code = main(["export", checkpoint("bert2bert"), str(out), "--format", "onnx",
                 "--num-beams", "2", "--max-new-tokens", "5", "--no-repeat-ngram-size", "2",
                 "--repetition-penalty", "1.2"])
    assert code == 0, capsys.readouterr().err
    assert "verified" in capsys.readouterr().out
    gen = json.loads((out / "export.json").read_text())["generation"]
    assert (gen["num_beams"], gen["max_new_tokens"], gen["no_repeat_ngram_size"],
            gen["repetition_penalty"]) == (2, 5, 2, 1.2)
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o2"), "--format",
                 "onnx"]) == 3
    assert "nothing" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_sampling_runs_with_the_plan(exported):
    """Sampling uses numpy's generator (not torch's draws): reproducible by seed, and with
    top_k=1 it is greedy, so it must equal pt's greedy tokens."""
    from encdec.onnx import load

    om = load(exported("bert2bert", "greedy"))
    ids, mask = inputs("bert2bert", 3)
    kw = dict(do_sample=True, num_return_sequences=2, max_new_tokens=6)
    a, b = om.generate(ids, mask, seed=3, **kw), om.generate(ids, mask, seed=3, **kw)
    assert a.shape[0] == 6 and np.array_equal(a, b)
    assert ((a >= 0) & (a < 99)).all()
    top1 = om.generate(ids, mask, seed=0, do_sample=True, top_k=1, max_new_tokens=6)
    want = pt_model("bert2bert").generate(ids, mask, max_new_tokens=6).numpy()
    assert np.array_equal(top1, want)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(PAIRS) - set(EXPORT_PAIRS)))
def test_every_pair_exports(tmp_path, name):
    """Every other pair of the matrix (projections, tying, ELECTRA, DistilBERT, Marian's
    sinusoidal positions, …): the runtime's greedy and beam tokens equal pt's."""
    from encdec.onnx import load

    model = pt_model(name)
    om = load(pt_export.export(model, tmp_path / name, max_new_tokens=8))
    ids, mask = inputs(name, 3)
    for kw in (dict(), dict(num_beams=4, no_repeat_ngram_size=2, repetition_penalty=1.3)):
        want = model.generate(ids, mask, max_new_tokens=8, **kw).numpy()
        assert np.array_equal(om.generate(ids, mask, **kw), want), kw
