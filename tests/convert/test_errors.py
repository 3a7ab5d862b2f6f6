"""Bad input and refused output: a message naming the problem, a non-zero exit, nothing at DST."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from encdec.convert import backends
from encdec.convert import converter as convert_module
from encdec.convert.files import read_msgpack, write_msgpack
from encdec.core.registry import ARCHITECTURES, architecture

from .conftest import fixture_dir, reference_pair


def _copy(tmp_path, name: str, fmt: str):
    src = tmp_path / "src"
    shutil.copytree(fixture_dir(name, fmt), src)
    return src


def _nothing_left(tmp_path, dst) -> bool:
    return not dst.exists() and not list(tmp_path.glob(f".{dst.name}.*"))


def test_truncated_safetensors(convert, tmp_path):
    src = _copy(tmp_path, "bert2bert", "pt")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = convert(src, tmp_path / "dst", "--to", "tf")
    assert code == 3 and "model.safetensors" in err and "truncated" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_h5_missing_a_dataset(convert, tmp_path):
    src = _copy(tmp_path, "bert2gpt2", "tf")
    with h5py.File(src / "tf_model.h5", "a") as f:
        name = next(n for n in f["decoder"].attrs["weight_names"] if "ln_f/gamma" in n)
        del f[f"decoder/{name}"]
    code, _, err = convert(src, tmp_path / "dst", "--to", "pt")
    assert code == 3 and "ln_f/gamma:0" in err and "missing" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_msgpack_wrong_shape(convert, tmp_path):
    src = _copy(tmp_path, "bert2bert", "flax")
    arrays = read_msgpack(src / "flax_model.msgpack")
    key = "encoder/encoder/layer/1/intermediate/dense/kernel"
    arrays[key] = arrays[key][:, :-1]
    write_msgpack(src / "flax_model.msgpack", list(arrays), arrays.__getitem__)
    code, _, err = convert(src, tmp_path / "dst", "--to", "pt")
    assert code == 3 and key in err and "(32, 36)" in err and "(32, 37)" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_msgpack_unmatched_key(convert, tmp_path):
    src = _copy(tmp_path, "bert2bert", "flax")
    arrays = read_msgpack(src / "flax_model.msgpack")
    arrays["decoder/cls/predictions/extra/kernel"] = np.zeros((2, 2), np.float32)
    write_msgpack(src / "flax_model.msgpack", list(arrays), arrays.__getitem__)
    code, _, err = convert(src, tmp_path / "dst", "--to", "tf")
    assert code == 3 and "decoder/cls/predictions/extra/kernel" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_unknown_architecture(convert, tmp_path):
    src = _copy(tmp_path, "bert2bert", "pt")
    config = json.loads((src / "config.json").read_text())
    config["encoder"]["model_type"] = "albert"
    (src / "config.json").write_text(json.dumps(config))
    code, _, err = convert(src, tmp_path / "dst", "--to", "flax")
    assert code == 3 and "'albert'" in err and "supported" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


@pytest.mark.parametrize("name, target, needle", [
    ("electra2electra", "tf", "ElectraForCausalLM"),  # TF had ElectraModel, no causal LM
    ("camembert2camembert", "flax", "CamembertModel"),  # no Flax CamemBERT at all
    ("bert2bart", "tf", "BartForCausalLM"),  # TF had no BART-family causal LM
])
def test_no_reference_class_for_the_target(convert, tmp_path, name, target, needle):
    code, _, err = convert(fixture_dir(name, "pt"), tmp_path / "dst", "--to", target)
    assert code == 3 and needle in err and f"no {target} form" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_missing_config(convert, tmp_path):
    src = _copy(tmp_path, "bert2bert", "tf")
    (src / "config.json").unlink()
    code, _, err = convert(src, tmp_path / "dst", "--to", "pt")
    assert code == 3 and "config.json" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_existing_destination_needs_force(convert, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, _, err = convert(fixture_dir("bert2bert", "pt"), dst, "--to", "tf")
    assert code == 4 and str(dst) in err and "--force" in err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_verification_failure_leaves_nothing(convert, tmp_path, monkeypatch):
    real_cast = convert_module.cast

    def corrupt(array, dtype):  # a converter bug: every weight off by 1e-3
        return real_cast(array, dtype) + np.asarray(1e-3, array.dtype)

    monkeypatch.setattr(convert_module, "cast", corrupt)
    code, out, err = convert(fixture_dir("bert2gpt2", "pt"), tmp_path / "dst", "--to", "flax")
    assert code == 1 and "exceeds the float32 bound" in err and "FAILED" in out
    assert _nothing_left(tmp_path, tmp_path / "dst")


def test_missing_framework_for_verify(convert, tmp_path, monkeypatch):
    real = backends.module

    def no_tf(framework):
        if framework == "tf":
            raise backends.BackendUnavailable("encdec.tf cannot be imported (test)")
        return real(framework)

    monkeypatch.setattr(backends, "module", no_tf)
    code, _, err = convert(fixture_dir("bert2bert", "pt"), tmp_path / "dst", "--to", "tf")
    assert code == 5 and "--no-verify" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")
    assert convert(fixture_dir("bert2bert", "pt"), tmp_path / "dst", "--to", "tf",
                   "--no-verify")[0] == 0


@pytest.mark.parametrize("argv, needle", [
    (["--to", "tf", "--dtype", "bfloat16"], "bfloat16"),
    (["--to", "tf", "--shard-size", "1MB"], "--shard-size"),
    (["--to", "pt", "--shard-size", "lots"], "--shard-size"),
    (["--to", "jax"], "--to"),
])
def test_usage_errors(convert, tmp_path, argv, needle):
    code, _, err = convert(fixture_dir("bert2bert", "pt"), tmp_path / "dst", *argv)
    assert code == 2 and needle in err
    assert _nothing_left(tmp_path, tmp_path / "dst")


# the BART-family decoders the reference's TF / Flax classes lacked (registry data: only BART
# had a Flax causal LM, `FlaxBartForCausalLM`; TF had none)
_LACKED = [(a.name, fmt) for a in ARCHITECTURES if a.family == "bart"
           for fmt, had in (("tf", a.tf is not None), ("flax", a.flax)) if not had]


@pytest.mark.parametrize("decoder, target", _LACKED)
def test_bart_family_without_a_reference_class(convert, tmp_path, decoder, target):
    """`--to tf/flax` for a decoder the reference had no such class for: a clear error naming
    the architecture and the class, and nothing written."""
    src = reference_pair("bert", decoder, tmp_path / "src")
    code, _, err = convert(src, tmp_path / "dst", "--to", target)
    assert code == 3, err
    assert f"{architecture(decoder).lm_class} (a {decoder!r} decoder)" in err, err
    assert f"no {target} form" in err
    assert _nothing_left(tmp_path, tmp_path / "dst")
