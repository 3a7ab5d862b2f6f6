"""HDF5 and msgpack readers/writers against h5py and flax.serialization themselves."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from flax import serialization

from encdec.convert import files
from encdec.convert.files import H5Reader, read_msgpack, write_h5, write_msgpack

from .conftest import REFERENCE_FILES, fixture_dir

FLAX_FILES = [n for n, f in REFERENCE_FILES if f == "flax"]
TF_FILES = [n for n, f in REFERENCE_FILES if f == "tf"]


def _nested(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *mods, leaf = key.split("/")
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = value
    return tree


@pytest.mark.parametrize("name", FLAX_FILES)
def test_msgpack_reader_matches_flax(name):
    path = fixture_dir(name, "flax") / "flax_model.msgpack"
    ours = read_msgpack(path)
    theirs = serialization.msgpack_restore(path.read_bytes())
    assert _nested(ours).keys() == theirs.keys()
    flat_theirs = {}

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v)
            else:
                flat_theirs[prefix + k] = v

    walk("", theirs)
    assert ours.keys() == flat_theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], flat_theirs[k])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_msgpack_writer_is_flax_byte_for_byte(tmp_path, dtype):
    import ml_dtypes

    rng = np.random.default_rng(0)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    flat = {"a/b/kernel": rng.standard_normal((3, 4)).astype(np_dtype),
            "a/c/bias": rng.standard_normal(4).astype(np_dtype),
            "d/embedding": rng.standard_normal((5, 2)).astype(np_dtype)}
    write_msgpack(tmp_path / "m.msgpack", list(flat), flat.__getitem__)
    expected = serialization.msgpack_serialize(_nested(flat), in_place=True)
    assert (tmp_path / "m.msgpack").read_bytes() == expected
    back = read_msgpack(tmp_path / "m.msgpack")
    assert all(back[k].dtype == flat[k].dtype and np.array_equal(back[k], flat[k]) for k in flat)


def test_msgpack_chunked_arrays(tmp_path, monkeypatch):
    """Arrays above flax's chunk size are written as flax chunks them; both read them back."""
    monkeypatch.setattr(files, "_MSGPACK_CHUNK", 16)
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 16)
    flat = {"x/kernel": np.arange(30, dtype=np.float32).reshape(5, 6),
            "x/bias": np.ones(2, np.float32)}
    write_msgpack(tmp_path / "m.msgpack", list(flat), flat.__getitem__)
    data = (tmp_path / "m.msgpack").read_bytes()
    assert data == serialization.msgpack_serialize(_nested(flat), in_place=True)
    kernel = flat["x/kernel"]
    np.testing.assert_array_equal(serialization.msgpack_restore(data)["x"]["kernel"], kernel)
    np.testing.assert_array_equal(read_msgpack(tmp_path / "m.msgpack")["x/kernel"], kernel)


@pytest.mark.parametrize("name", TF_FILES)
def test_h5_round_trip_keeps_reference_structure(tmp_path, name):
    """Rewriting the reference's tf_model.h5 keeps every dataset, attribute and value."""
    src = fixture_dir(name, "tf") / "tf_model.h5"
    reader = H5Reader(src)
    write_h5(tmp_path / "tf_model.h5", reader.keys(), reader.get)
    with h5py.File(src, "r") as a, h5py.File(tmp_path / "tf_model.h5", "r") as b:
        assert list(a.attrs["layer_names"]) == list(b.attrs["layer_names"])
        assert a.attrs["backend"] == b.attrs["backend"]
        for side in a.attrs["layer_names"]:
            names_a = sorted(n.split("/", 1)[1] for n in a[side].attrs["weight_names"])
            names_b = sorted(n.split("/", 1)[1] for n in b[side].attrs["weight_names"])
            assert names_a == names_b  # equal up to the model scope, which loaders ignore
            for full in a[side].attrs["weight_names"]:
                rest = full.split("/", 1)[1]
                new = f"{side}/tf_encoder_decoder_model/{rest}"
                assert a[f"{side}/{full}"].dtype == b[new].dtype
                np.testing.assert_array_equal(a[f"{side}/{full}"][()], b[new][()])
    reader.close()


def test_h5_long_weight_names_are_chunked(tmp_path, monkeypatch):
    """Above HDF5's attribute limit, weight_names is split as tf-keras splits it."""
    monkeypatch.setattr(files, "_H5_ATTR_LIMIT", 100)
    flat = {f"encoder/bert/layer_._{i}/dense/kernel": np.full((2, 2), i, np.float32)
            for i in range(12)}
    write_h5(tmp_path / "tf_model.h5", list(flat), flat.__getitem__)
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:
        assert "weight_names" not in f["encoder"].attrs and "weight_names1" in f["encoder"].attrs
    reader = H5Reader(tmp_path / "tf_model.h5")
    assert reader.keys() == list(flat)
    assert all(np.array_equal(reader.get(k), v) for k, v in flat.items())
    reader.close()
