"""Readers and writers of the reference's native weight files: tf-keras HDF5 (`tf_model.h5`) and
flax.serialization msgpack (`flax_model.msgpack`), keyed by '/'-joined reference keys.

Formats as tf-keras 2 `save_weights` (root attrs `backend`, `keras_version`, `layer_names`; one
group per top-level layer with a `weight_names` attr, split into `weight_names0`, `weight_names1`, …
above HDF5's 64 KiB attribute limit) and `flax.serialization.msgpack_serialize` (nested maps,
array leaves as ExtType 1 = packb((shape, dtype name, C bytes)), arrays over 2**30 bytes chunked).
Only h5py, msgpack and numpy are needed; writers stream one tensor at a time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from encdec.core.checkpoint import CheckpointError

TF_WEIGHTS_NAME = "tf_model.h5"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
KERAS_VERSION = "2.19.0"  # the tf-keras HDF5 layout written (the fixtures' version)
_H5_ATTR_LIMIT = 64512  # tf-keras HDF5_OBJECT_HEADER_LIMIT
_MSGPACK_CHUNK = 2**30  # flax.serialization.MAX_CHUNK_SIZE
_SCOPE = re.compile(r"[A-Za-z0-9_.\-]+")


def _dtype(name: str | bytes) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "bfloat16":
        import ml_dtypes  # numpy has no bfloat16; ml_dtypes comes with jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# ----------------------------------------------------------------------------- HDF5 (TF)


def _h5_attr(group, name: str) -> list[str]:
    if name in group.attrs:
        values = list(group.attrs[name])
    else:  # chunked by tf-keras: name0, name1, …
        values, k = [], 0
        while f"{name}{k}" in group.attrs:
            values += list(group.attrs[f"{name}{k}"])
            k += 1
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _set_h5_attr(group, name: str, values: Sequence[str]) -> None:
    import h5py

    data = np.array(list(values), dtype=h5py.string_dtype())
    encoded = sum(len(v.encode()) + 16 for v in values)  # bytes as stored, with overhead
    chunks = max(1, -(-encoded // _H5_ATTR_LIMIT))
    if chunks == 1:
        group.attrs[name] = data
    else:
        for k, part in enumerate(np.array_split(data, chunks)):
            group.attrs[f"{name}{k}"] = part


class H5Reader:
    """Datasets of a reference `tf_model.h5`, keyed `<side>/<path>` (scope and `:0` dropped).

    Whatever the file holds, a problem is a CheckpointError naming it (h5py can raise almost
    any exception type on a damaged file), and no dataset is read whose size exceeds the file's
    (HDF5 can declare huge datasets that store nothing)."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except Exception as e:  # OSError, and others on a damaged superblock
            raise CheckpointError(f"{self.path} is not a readable HDF5 file: {e}") from None
        self._datasets: dict[str, str] = {}
        try:
            self._index()
        except CheckpointError:
            self._file.close()
            raise
        except Exception as e:
            self._file.close()
            raise CheckpointError(f"{self.path} is not a tf-keras weights file: "
                                  f"{type(e).__name__}: {e}") from None

    def _index(self) -> None:
        """Map each weight name listed in the file's attributes to its dataset path."""
        sides = _h5_attr(self._file, "layer_names")
        if not sides:
            raise CheckpointError(f"{self.path} has no 'layer_names' attribute: not a "
                                  "tf-keras weights file")
        for side in sides:
            if side not in self._file:
                raise CheckpointError(f"{self.path}: layer {side!r} is listed in "
                                      "'layer_names' but has no group")
            for name in _h5_attr(self._file[side], "weight_names"):
                self._add(side, name)

    def _add(self, side: str, weight_name: str) -> None:
        parts = weight_name.split("/")
        if (len(parts) < 3 or not weight_name.endswith(":0") or parts[1] != side
                or not _SCOPE.fullmatch(parts[0])):
            raise CheckpointError(f"{self.path}: weight {side}/{weight_name} is not named "
                                  f"'<scope>/{side}/…:0' as the reference writes it")
        key = "/".join([side, *parts[2:]])[:-2]
        if key in self._datasets:
            raise CheckpointError(f"{self.path}: {key!r} is stored twice")
        self._datasets[key] = f"{side}/{weight_name}"

    def keys(self) -> list[str]:
        return list(self._datasets)

    def dataset(self, key: str) -> str:
        """The HDF5 path of `key` (for messages)."""
        return self._datasets[key]

    def _get_dataset(self, key: str):
        import h5py

        path = self._datasets[key]
        try:
            dataset = self._file[path] if path in self._file else None
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot open {path!r}: {e}") from None
        if not isinstance(dataset, h5py.Dataset):
            raise CheckpointError(f"{self.path}: dataset {path!r} is listed in 'weight_names' "
                                  "but missing from the file")
        return dataset

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._get_dataset(key).shape or ())

    def get(self, key: str) -> np.ndarray:
        dataset = self._get_dataset(key)
        try:
            nbytes = dataset.size * dataset.dtype.itemsize
            if nbytes > self.path.stat().st_size:
                raise CheckpointError(f"{self.path}: dataset {self._datasets[key]!r} declares "
                                      f"{nbytes} bytes, more than the file holds")
            array = np.asarray(dataset[()])
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"{self.path}: cannot read {self._datasets[key]!r}: {e}") from None
        if array.dtype.kind not in "biuf":
            raise CheckpointError(f"{self.path}: dataset {self._datasets[key]!r} holds "
                                  f"{array.dtype}, not numbers")
        return array

    def close(self) -> None:
        self._file.close()


def write_h5(path: str | os.PathLike, keys: Sequence[str],
             get: Callable[[str], np.ndarray], *, scope: str = "tf_encoder_decoder_model",
             progress: Callable[[Iterator[str]], Iterator[str]] = iter) -> None:
    """Write `keys` (`<side>/<path>`, values from `get`) as tf-keras `save_weights` does."""
    import h5py

    sides: dict[str, list[str]] = {}
    for key in keys:
        side, _, rest = key.partition("/")
        sides.setdefault(side, []).append(rest)
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = KERAS_VERSION
        _set_h5_attr(f, "layer_names", list(sides))
        for side, rests in sides.items():
            g = f.create_group(side)
            _set_h5_attr(g, "weight_names", [f"{scope}/{side}/{r}:0" for r in rests])
        f.create_group("top_level_model_weights").attrs["weight_names"] = np.array([])
        for key in progress(iter(keys)):
            side, _, rest = key.partition("/")
            array = np.ascontiguousarray(get(key))
            if array.dtype.name == "bfloat16":
                raise CheckpointError("tf_model.h5 cannot hold bfloat16 (HDF5 has no such type)")
            f[side].create_dataset(f"{scope}/{side}/{rest}:0", data=array)


# ----------------------------------------------------------------------------- msgpack (Flax)


def _unpack_array(data: bytes) -> np.ndarray:
    import msgpack

    shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
    dtype = _dtype(dtype_name)
    if (dtype.kind not in "biuf" and dtype.name != "bfloat16") or not isinstance(buf, bytes):
        raise ValueError(f"array of dtype {dtype} is not a weight")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)  # a view: never more than the file


def _ext_hook(code: int, data: bytes):
    import msgpack

    if code == 1:  # ndarray
        return _unpack_array(data)
    if code == 3:  # numpy scalar
        return _unpack_array(data)[()]
    return msgpack.ExtType(code, data)


def read_msgpack(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a flax msgpack file, keyed by its '/'-joined path."""
    import msgpack

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    try:  # msgpack bounds every length by the input's, so nothing exceeds the file
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
        raise CheckpointError(f"{path} is not a readable flax msgpack file: "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} does not hold a map of parameters")
    flat: dict[str, np.ndarray] = {}

    def chunked(where: str, node: dict) -> np.ndarray:
        try:
            shape = [node["shape"][str(i)] for i in range(len(node["shape"]))]
            chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: chunked array {where!r} is malformed: "
                                  f"{type(e).__name__}: {e}") from None

    def walk(prefix: list[str], node) -> None:
        where = "/".join(prefix)
        if isinstance(node, dict) and "__msgpack_chunked_array__" in node:
            value = chunked(where, node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk([*prefix, str(k)], v)
            return
        elif isinstance(node, np.ndarray):
            value = node
        else:
            raise CheckpointError(f"{path}: {where!r} is a {type(node).__name__}, not an array")
        if where in flat:
            raise CheckpointError(f"{path}: {where!r} is stored twice")
        flat[where] = value

    walk([], tree)
    return flat


def write_msgpack(path: str | os.PathLike, keys: Sequence[str],
                  get: Callable[[str], np.ndarray], *,
                  progress: Callable[[Iterator[str]], Iterator[str]] = iter) -> None:
    """Write `keys` (values from `get`) as `flax.serialization.msgpack_serialize`, streaming."""
    import msgpack

    tree: dict = {}
    for key in keys:
        node = tree
        *mods, leaf = key.split("/")
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = key
    packer = msgpack.Packer(use_bin_type=True)
    order = progress(iter(keys))

    def ext(array: np.ndarray) -> msgpack.ExtType:
        payload = (list(array.shape), array.dtype.name, array.tobytes("C"))
        return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))

    def leaf_bytes(key: str) -> bytes:
        next(order, None)  # advance the progress bar
        array = np.ascontiguousarray(get(key))
        if array.nbytes <= _MSGPACK_CHUNK:
            return packer.pack(ext(array))
        size = max(1, _MSGPACK_CHUNK // array.dtype.itemsize)
        flat = array.reshape(-1)
        chunks = {str(i): ext(flat[j:j + size]) for i, j in enumerate(range(0, flat.size, size))}
        return packer.pack({"__msgpack_chunked_array__": True,
                            "shape": {str(i): n for i, n in enumerate(array.shape)},
                            "chunks": chunks})

    with open(path, "wb") as f:
        def write(node: dict) -> None:
            f.write(packer.pack_map_header(len(node)))
            for k, v in node.items():
                f.write(packer.pack(k))
                if isinstance(v, dict):
                    write(v)
                else:
                    f.write(leaf_bytes(v))

        write(tree)
