"""Checkpoint I/O in the Hugging Face directory layout: hub/cache resolution, lazy safetensors
(or ``pytorch_model.bin``) reading and atomic, sharded safetensors writing.

Follows the reference's ``save_pretrained`` layout: ``config.json``, ``generation_config.json``,
``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``.
Imports numpy, safetensors and huggingface_hub only; torch is imported lazily, and only to read
``pytorch_model.bin`` files.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Online, safetensors are fetched first; ``*.bin`` only for a repo that has no safetensors
# weights, so a repo holding both is not downloaded twice.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_HUB_PATTERNS_BIN = [*_HUB_PATTERNS, "*.bin"]
# Files of an old checkpoint that must not survive an overwrite: they would contradict the new
# weights (a stale tf_model.h5 next to a fresh model.safetensors, a shard of a longer series, …).
_STALE_WEIGHTS = re.compile(
    r"^(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?"
    r"\.(safetensors|bin|h5|msgpack)(\.index\.json)?$"
)


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or written; the message names the file and key."""


# ----------------------------------------------------------------------------- resolution


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    # The environment as it is now wins over huggingface_hub's copy, taken at its import.
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    if "HF_HUB_OFFLINE" in os.environ:
        return False
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _default_cache_dir() -> str | None:
    # huggingface_hub reads HF_HUB_CACHE once, at import; honour a value set later as well.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _check_files(directory: Path, filenames: Iterable[str], what: str) -> Path:
    for name in filenames:
        if not (directory / name).is_file():
            raise CheckpointError(f"{what} {str(directory)!r} has no {name}")
    return directory


def _has_safetensors(directory: Path) -> bool:
    return (directory / SAFE_WEIGHTS_NAME).is_file() or (
        directory / SAFE_WEIGHTS_INDEX_NAME
    ).is_file()


def resolve_checkpoint(
    path_or_id: str | os.PathLike,
    *,
    filenames: Iterable[str] = (CONFIG_NAME,),
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return the local directory of a checkpoint given as a local path or a hub repo id.

    A local directory is returned as is (after checking that it holds ``filenames``). Anything
    else is treated as a hub id and resolved with ``huggingface_hub.snapshot_download``, offline
    when ``HF_HUB_OFFLINE`` is set or the network fails.
    """
    filenames = tuple(filenames)
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return _check_files(path, filenames, "checkpoint directory")
    if path.exists():
        raise CheckpointError(f"{text!r} is a file; a checkpoint is a directory with {CONFIG_NAME}")

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise CheckpointError(
            f"checkpoint directory {text!r} does not exist (and it is not a valid hub id)"
        ) from None

    from huggingface_hub import snapshot_download

    cache = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
    kwargs: dict[str, Any] = dict(revision=revision, cache_dir=cache)
    error: Exception | None = None
    snapshot = None
    if not _hub_offline():
        try:
            snapshot = snapshot_download(text, allow_patterns=_HUB_PATTERNS, **kwargs)
            if not _has_safetensors(Path(snapshot)):
                snapshot = snapshot_download(text, allow_patterns=_HUB_PATTERNS_BIN, **kwargs)
        except Exception as e:  # network down, repo gone, …: fall back to the local cache
            error, snapshot = e, None
    if snapshot is None:
        try:
            snapshot = snapshot_download(
                text, local_files_only=True, allow_patterns=_HUB_PATTERNS_BIN, **kwargs
            )
        except Exception as e:
            error = error or e
    if snapshot is None:
        from huggingface_hub import constants

        where = cache or constants.HF_HUB_CACHE
        raise CheckpointError(
            f"{text!r} is not a local directory and is not in the local hub cache ({where}); "
            f"download it first (`hf download {text}` with network access) or pass the path "
            f"of a local checkpoint directory [{type(error).__name__}: {error}]"
        ) from error
    return _check_files(Path(snapshot), filenames, f"hub checkpoint {text!r} at")


def read_config_dict(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``config.json`` of a checkpoint directory (or a json file given directly)."""
    path = Path(directory)
    if path.is_dir():
        path = path / CONFIG_NAME
    return read_json_object(path)


def _unique_keys(path: Path, what: str):
    """A json ``object_pairs_hook`` that refuses a key given twice (json keeps the last one
    silently, so two readers of the same file could disagree)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise CheckpointError(f"{path}: {what} {key!r} appears twice")
            out[key] = value
        return out

    return hook


def _loads(path: Path, data: bytes | str, what: str = "key", doc: str = "") -> Any:
    """``json.loads`` whose every failure is a CheckpointError naming ``path`` (and ``doc``,
    the part of the file that is JSON)."""
    where = f"{path}{doc}"
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_unique_keys(path, what))
    except CheckpointError:
        raise
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where} is not UTF-8 text: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{where} is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and ints beyond Python's digit limit
        raise CheckpointError(f"{where} is not valid JSON: {e}") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Read a json file that must hold an object (config, generation config, index)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from e
    obj = _loads(path, data)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {type(obj).__name__}")
    return obj



# ----------------------------------------------------------------------------- reading


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the json header


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_span(path: Path, key: str, info: Any) -> tuple[int, int]:
    """Check one header entry (dtype known, shape and offsets non-negative ints, byte length
    = shape x dtype size) and return its ``(begin, end)``."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is a {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(f"{where} has unsupported dtype {dtype!r}; supported: "
                              f"{sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_index, offsets))
            or offsets[0] > offsets[1]):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} are not [begin, end] with "
                              "0 <= begin <= end")
    need = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    begin, end = offsets
    if need != end - begin:
        raise CheckpointError(f"{where} has {end - begin} bytes, its shape {shape} and dtype "
                              f"{dtype} need {need}")
    return begin, end


def _read_safetensors_header(path: Path, f) -> tuple[dict[str, Any], int]:
    """Read and check the header of an open safetensors file as the format requires: header
    length within the file, unique keys, known dtypes, byte lengths that match shape and
    dtype, and tensors that tile the data area exactly (no overlap, no gap, nothing out of
    bounds). Returns the header and the offset of the data area. Reads at most the file."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{path} is truncated ({size} bytes): no safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
        raise CheckpointError(
            f"{path} is truncated or corrupt: header claims {n} bytes, file has {size}"
        )
    if n > _MAX_HEADER:
        raise CheckpointError(f"{path}: safetensors header of {n} bytes is over the format's "
                              f"limit of {_MAX_HEADER}")
    header = _loads(path, f.read(n), "header key", ": the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is a {type(header).__name__}, not an "
                              "object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    data = size - 8 - n
    spans = sorted((*_tensor_span(path, k, v), k) for k, v in header.items()
                   if k != "__metadata__")
    for _, end, key in spans:
        if end > data:
            raise CheckpointError(f"{path} is truncated: tensor {key!r} ends at byte {end} of "
                                  f"the data, which has {data} bytes (file size {size})")
    at, prev = 0, None
    for begin, end, key in spans:
        if begin < at:
            raise CheckpointError(f"{path}: tensors {prev!r} and {key!r} overlap (bytes "
                                  f"{begin}..{at} of the data)")
        if begin > at:
            raise CheckpointError(f"{path}: {begin - at} bytes before tensor {key!r} belong to "
                                  "no tensor")
        at, prev = end, key
    if at != data:
        raise CheckpointError(f"{path}: {data - at} bytes after the last tensor belong to no "
                              "tensor")
    return header, 8 + n


class _SafetensorsFile:
    """One safetensors file; reads one tensor per call with a plain read into a fresh array.

    No memory map: a mapped file keeps every page it touched resident, so a load would hold
    the checkpoint and the model at once. Reading tensor by tensor keeps the peak at the
    model's weights plus one tensor. The file stays open from the first look at it, so a save
    over the same directory (which replaces the files) does not change what this reader reads.
    """

    def __init__(self, path: Path):
        self.path = path
        self._header: dict[str, Any] | None = None
        self._file: io.BufferedReader | None = None
        self._data_start = 0
        self._lock = threading.Lock()

    def _open(self) -> dict[str, Any]:
        if self._header is None:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 - kept open until close()
            except OSError as e:
                raise CheckpointError(f"{self.path} cannot be read: {e}") from None
            try:
                self._header, self._data_start = _read_safetensors_header(self.path, f)
            except BaseException:
                f.close()
                raise
            self._file = f
        return self._header

    def keys(self) -> list[str]:
        return [k for k in self._open() if k != "__metadata__"]

    def metadata(self) -> dict[str, str]:
        return self._open().get("__metadata__") or {}

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info(key)["shape"])

    def _info(self, key: str) -> dict[str, Any]:
        header = self._open()
        if key == "__metadata__" or key not in header:
            raise CheckpointError(f"{self.path} has no tensor {key!r}")
        return header[key]

    def stored_dtype(self, key: str) -> str:
        """The tensor's dtype as stored, as a numpy-style name ("bfloat16", "float32", ...)."""
        code = self._info(key)["dtype"]
        return _DTYPE_NAMES.get(code, code.lower())

    def get(self, key: str) -> np.ndarray:
        info = self._info(key)  # checked at open: nbytes == end - begin, within the file
        begin, _ = info["data_offsets"]
        out = np.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
        f = self._file
        assert f is not None  # opened by _info
        with self._lock:
            f.seek(self._data_start + begin)
            if f.readinto(out.reshape(-1).view(np.uint8).data) != out.nbytes:
                raise CheckpointError(f"{self.path} is truncated at tensor {key!r}")
        if info["dtype"] == "BF16":  # numpy has no bfloat16: widen the bits (exact)
            logger.info("%s: %s is bfloat16; returned as float32 (exact)", self.path, key)
            return _bf16_bits_to_f32(out)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._header, self._file = None, None


class _TorchBinFile:
    """One ``pytorch_model.bin``, loaded with ``torch.load(weights_only=True, mmap=True)``."""

    def __init__(self, path: Path):
        self.path = path
        self._state: dict | None = None

    def _load(self) -> dict:
        if self._state is None:
            try:
                import torch  # lazily: only this reader needs torch
            except ImportError:
                raise CheckpointError(
                    f"{self.path} is a pytorch_model.bin: reading it needs torch "
                    "(pip install torch), or save the checkpoint as safetensors"
                ) from None

            kwargs = dict(weights_only=True, map_location="cpu")
            try:
                with warnings.catch_warnings():  # torch's warnings are not the user's business
                    warnings.simplefilter("ignore")
                    try:
                        state = torch.load(self.path, mmap=True, **kwargs)
                    except RuntimeError as e:  # legacy (non-zip) format cannot be mmapped
                        if "mmap" not in str(e):
                            raise
                        state = torch.load(self.path, **kwargs)
            except pickle.UnpicklingError as e:
                detail = str(e).partition("WeightsUnpickler error:")[2].strip() or str(e)
                detail = detail.split("\n")[0].split(". ")[0].strip().rstrip(".")
                raise CheckpointError(
                    f"{self.path} was refused by torch.load(weights_only=True), which never "
                    f"runs a pickle's code: {detail}. Re-save it as safetensors where you trust "
                    "it") from None
            except Exception as e:
                raise CheckpointError(f"{self.path} cannot be loaded with torch.load: "
                                      f"{type(e).__name__}: {e}") from None
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{self.path} does not hold a state dict")
            self._state = dict(state)
        return self._state

    def keys(self) -> list[str]:
        return list(self._load())

    def metadata(self) -> dict[str, str]:
        return {"format": "pt"}

    def _tensor(self, key: str):
        import torch

        value = self._load()[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{self.path}: {key!r} is a {type(value).__name__}, not a tensor")
        return value

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensor(key).shape)

    def stored_dtype(self, key: str) -> str:
        return str(self._tensor(key).dtype).removeprefix("torch.")

    def get(self, key: str) -> np.ndarray:
        import torch

        t = self._tensor(key).detach()
        if t.dtype == torch.bfloat16:
            logger.info("%s: %s is bfloat16; returned as float32 (exact)", self.path, key)
            t = t.float()
        return t.numpy().copy()  # own the memory: do not keep the file's mapping alive

    def close(self) -> None:
        self._state = None


def _weights_file(path: Path) -> _SafetensorsFile | _TorchBinFile:
    return _TorchBinFile(path) if path.suffix == ".bin" else _SafetensorsFile(path)


class StateDictReader(Mapping[str, np.ndarray]):
    """Read-only mapping from canonical weight names to numpy arrays, one tensor per lookup.

    Listing keys is cheap (file headers only); ``reader[key]`` reads one tensor. bfloat16
    tensors come back as float32 (bf16 -> fp32 is exact).
    """

    def __init__(self, weight_map: Mapping[str, str | os.PathLike], *, index: Path | None = None,
                 files: Mapping[Path, _SafetensorsFile | _TorchBinFile] | None = None):
        self._files: dict[Path, _SafetensorsFile | _TorchBinFile] = dict(files or {})
        self._map: dict[str, Path] = {}
        for key, file in weight_map.items():
            path = Path(file)
            if path not in self._files:
                if not path.is_file():
                    where = f"{index} lists {key!r} in {path.name}, which" if index else str(path)
                    raise CheckpointError(f"{where} does not exist")
                self._files[path] = _weights_file(path)
            self._map[key] = path
        self.index = index

    @classmethod
    def from_files(cls, files: Iterable[str | os.PathLike]) -> StateDictReader:
        """Reader over whole weight files (``.safetensors`` or ``.bin``), keys read from each."""
        weight_map: dict[str, Path] = {}
        opened: dict[Path, _SafetensorsFile | _TorchBinFile] = {}
        try:
            for file in files:
                path = Path(file)
                if not path.is_file():
                    raise CheckpointError(f"{path} does not exist")
                opened[path] = _weights_file(path)
                for key in opened[path].keys():
                    if key in weight_map:
                        raise CheckpointError(f"{key!r} is in both {weight_map[key]} and {path}")
                    weight_map[key] = path
        except BaseException:
            for f in opened.values():
                f.close()
            raise
        return cls(weight_map, files=opened)

    @classmethod
    def from_index(cls, index: str | os.PathLike) -> StateDictReader:
        """Reader over a sharded checkpoint described by an ``*.index.json`` file: every shard
        a plain file name next to the index."""
        index = Path(index)
        data = read_json_object(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        for key, file in weight_map.items():
            if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file \
                    or "\\" in file:
                raise CheckpointError(f"{index}: {key!r} is mapped to {file!r}, which is not the "
                                      "file name of a shard next to the index")
        return cls({k: index.parent / v for k, v in weight_map.items()}, index=index)

    def __getitem__(self, key: str) -> np.ndarray:
        path = self._map[key]  # KeyError for an unknown key, as a Mapping must
        file = self._files[path]
        try:
            return file.get(key)
        except CheckpointError:
            raise
        except KeyError:
            raise CheckpointError(f"{path} does not hold {key!r} (see {self.index})") from None
        except SafetensorError as e:
            raise CheckpointError(f"{path}: cannot read tensor {key!r}: {e}") from e

    def stored_dtype(self, key: str) -> str:
        """The dtype `key` is stored in ("bfloat16", "float32", "int64", ...); `reader[key]`
        returns bfloat16 widened to float32."""
        return self._files[self._map[key]].stored_dtype(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def source(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self._map[key]

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of ``key`` without reading its data."""
        try:
            return self._files[self._map[key]].shape(key)
        except SafetensorError as e:
            raise CheckpointError(f"{self._map[key]}: {key!r}: {e}") from e

    def check(self) -> None:
        """Read every safetensors header now (see ``_read_safetensors_header``) and check that
        each shard holds the keys the index gives it (``.bin`` files are checked on read)."""
        held = {path: set(f.keys()) for path, f in self._files.items()
                if isinstance(f, _SafetensorsFile)}
        for key, path in self._map.items():
            if path in held and key not in held[path]:
                raise CheckpointError(f"{self.index} lists {key!r} in {path.name}, which does "
                                      "not hold it")

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def metadata(self) -> dict[str, str]:
        """Metadata of the first weight file (safetensors ``__metadata__``)."""
        return next(iter(self._files.values())).metadata() if self._files else {}

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def __enter__(self) -> StateDictReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateDictReader({len(self)} tensors in {len(self._files)} file(s))"


def open_state_dict(directory: str | os.PathLike) -> StateDictReader:
    """Open the weights of a checkpoint directory, preferring safetensors over ``.bin``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        reader = StateDictReader.from_files([directory / SAFE_WEIGHTS_NAME])
    elif (directory / SAFE_WEIGHTS_INDEX_NAME).is_file():
        reader = StateDictReader.from_index(directory / SAFE_WEIGHTS_INDEX_NAME)
    elif (directory / WEIGHTS_NAME).is_file():
        reader = StateDictReader.from_files([directory / WEIGHTS_NAME])
    elif (directory / WEIGHTS_INDEX_NAME).is_file():
        reader = StateDictReader.from_index(directory / WEIGHTS_INDEX_NAME)
    else:
        raise CheckpointError(
            f"checkpoint directory {directory} has no weights: expected {SAFE_WEIGHTS_NAME}, "
            f"{SAFE_WEIGHTS_INDEX_NAME}, {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}"
        )
    try:
        reader.check()
    except BaseException:
        reader.close()
        raise
    return reader


# ----------------------------------------------------------------------------- writing

_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"``, ``"500MB"``, ``"1.5GiB"``."""
    if isinstance(size, bool):
        raise ValueError(f"invalid size {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(size))
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS:
        raise ValueError(f"invalid size {size!r}; expected e.g. 5GB, 500MB, 2GiB or an int")
    value = math.floor(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return value


def _items(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]):
    return tensors.items() if isinstance(tensors, Mapping) else tensors


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Mapping) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_shards(
    tmp: Path,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    max_bytes: int,
    metadata: dict[str, str],
) -> None:
    """Stream tensors into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[str]] = []
    seen: set[str] = set()
    current: dict[str, np.ndarray] = {}
    current_bytes = total = 0

    def flush() -> None:
        nonlocal current, current_bytes
        if current:
            save_file(current, str(tmp / f".shard-{len(shards):05d}"), metadata=metadata)
            shards.append(list(current))
            current, current_bytes = {}, 0

    for name, array in _items(tensors):
        if not isinstance(name, str):
            raise CheckpointError(f"tensor names must be str, got {name!r}")
        if name in seen:
            raise CheckpointError(f"tensor {name!r} is given twice")
        if not isinstance(array, np.ndarray):
            raise CheckpointError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
        seen.add(name)
        array = np.ascontiguousarray(array)
        if current and current_bytes + array.nbytes > max_bytes:
            flush()
        current[name] = array
        current_bytes += array.nbytes
        total += array.nbytes
    flush()
    if not shards:  # an empty model still gets a (valid, empty) weights file
        save_file({}, str(tmp / ".shard-00000"), metadata=metadata)
        shards.append([])

    if len(shards) == 1:
        os.replace(tmp / ".shard-00000", tmp / SAFE_WEIGHTS_NAME)
        _fsync(tmp / SAFE_WEIGHTS_NAME)
        return
    weight_map = {}
    for k, names in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(tmp / f".shard-{k:05d}", tmp / file)
        _fsync(tmp / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(tmp / SAFE_WEIGHTS_INDEX_NAME, index)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ----------------------------------------------------------------------------- safe saving
#
# A save to ``parent/name`` holds an exclusive lock on ``parent/.name.lock`` from start to end,
# writes into ``parent/.name.tmp-*`` and swaps that with ``parent/name`` in one atomic rename
# (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, see `_swap`). The lock is an
# ``flock``: the kernel drops it when its holder exits or is killed, so there is no stale lock to
# guess about, and a ``.name.tmp-*`` / ``.name.swap-*`` found while holding it belongs to a save
# that is no longer running and is deleted.

try:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError when held

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> None:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            raise BlockingIOError from None


def _temporaries(target: Path) -> list[Path]:
    """Leftovers of earlier saves to ``target`` (only meaningful while holding its lock)."""
    prefixes = tuple(f".{target.name}.{kind}-" for kind in ("tmp", "old", "swap"))
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefixes))


class _SaveLock:
    """Exclusive, non-blocking right to save to ``target``; a second save fails at once with a
    CheckpointError that says another save to that directory is in progress."""

    def __init__(self, target: Path):
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> _SaveLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _try_lock(fd)
            except BlockingIOError:
                os.close(fd)
                try:
                    holder = self.path.read_text().strip() or "unknown"
                except OSError:
                    holder = "unknown"
                raise CheckpointError(
                    f"cannot save to {self.target}: another save to that directory is in "
                    f"progress ({holder}; lock {self.path})") from None
            try:  # the previous holder may have removed the file after we opened it
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"held by process {os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            os.unlink(self.path)  # before unlocking: a waiter then sees a new inode and retries
        except OSError:
            pass
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None


def _recover(target: Path) -> None:
    """Under the lock: restore a checkpoint left in ``.name.swap-*`` by a save killed between
    its two renames (platforms without an atomic exchange), then delete every leftover."""
    leftovers = _temporaries(target)
    olds = [p for p in leftovers if p.name.startswith(f".{target.name}.swap-")]
    if not target.exists() and olds:
        old = max(olds, key=lambda p: p.stat().st_mtime)
        logger.warning("%s was missing after an interrupted save; restored from %s", target, old)
        os.replace(old, target)
        leftovers.remove(old)
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``);
    False where the platform or file system cannot."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            import ctypes

            fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
                _renameat2 = fn
    if not _renameat2:
        return False
    import ctypes

    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _swap(tmp: Path, target: Path) -> Path:
    """Put the complete ``tmp`` at ``target``; return where the previous ``target`` now is."""
    if _exchange(tmp, target):
        return tmp
    # two renames: a process killed between them leaves no ``target``; `_recover` restores it
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.swap-", dir=target.parent))
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    return old


def _fsync_dir(path: Path) -> None:
    if os.name == "posix":
        _fsync(path)


def write_checkpoint(
    directory: str | os.PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    *,
    config: Mapping[str, Any],
    generation_config: Mapping[str, Any] | None = None,
    max_shard_size: int | str = "5GB",
    metadata: Mapping[str, str] | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``files`` maps names inside the checkpoint (``"vocab.txt"``, ``"decoder_tokenizer/…"``) to
    files copied there (the tokenizer's), in the same atomic write.

    ``tensors`` may be a mapping or an iterable of ``(name, array)`` pairs, consumed once,
    shard by shard, so a backend can stream its weights without a second full copy. Everything
    is written into a temporary sibling directory that then replaces ``directory`` in one
    rename; on any error the temporary directory is removed and ``directory`` is left as it
    was. Files of an existing ``directory`` that are not weights or configs (tokenizer files,
    README, …) are kept. A concurrent save to the same directory fails with a CheckpointError
    instead of mixing files; leftovers of a killed save are deleted by the next one.
    """
    target = Path(directory)
    max_bytes = parse_size(max_shard_size)
    meta = {"format": "pt", **dict(metadata or {})}
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _SaveLock(target):
        if target.exists() and not target.is_dir():
            raise CheckpointError(f"cannot write a checkpoint to {target}: it is a file")
        _recover(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        old: Path | None = None  # where the previous checkpoint is once swapped out
        moved = False
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; give it a normal mode
            _write_shards(tmp, tensors, max_bytes, meta)
            _write_json(tmp / CONFIG_NAME, dict(config))
            if generation_config is not None:
                _write_json(tmp / GENERATION_CONFIG_NAME, dict(generation_config))
            for name, source in (files or {}).items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp / name)
            for name in (CONFIG_NAME, GENERATION_CONFIG_NAME, *(files or {})):
                if (tmp / name).exists():
                    _fsync(tmp / name)
            if target.is_dir():
                for entry in target.iterdir():
                    if (tmp / entry.name).exists() or _STALE_WEIGHTS.match(entry.name):
                        continue
                    if entry.name in (CONFIG_NAME, GENERATION_CONFIG_NAME):
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(entry), str(tmp / entry.name))
                old = _swap(tmp, target)
            else:
                os.replace(tmp, target)
            moved = True
            _fsync_dir(parent)
        finally:
            if not moved:
                shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return target
