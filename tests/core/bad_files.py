"""Bad files the readers are tried with: each case builds one damaged file in a directory and
reads it the way a user would; `error()` is the message the library gives.

`tests/core/test_checkpoint.py` asserts every case (its error class, and that the message names
the file); `docs/reliability.md` renders them, so the page and the tests cannot drift.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encdec.core import BertConfig, ConfigError, EncoderDecoderConfig, GenerationConfig
from encdec.core.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    open_state_dict,
    write_checkpoint,
)

MARKER = "payload-ran"  # the file the malicious pickle would create


@dataclass(frozen=True)
class BadFile:
    """One bad input file: `build(directory)` writes it and returns the call that reads it."""

    name: str
    description: str
    file: str  # the file name the message must contain
    build: Callable[[Path], Callable[[], object]]
    error_class: type[Exception] = CheckpointError

    def exception(self, directory: Path) -> Exception:
        """Build the case in `directory`, read it, and return the error raised."""
        read = self.build(directory)
        try:
            read()
        except Exception as e:  # the test asserts the class; here any error is returned
            return e
        raise AssertionError(f"{self.name}: reading the bad file raised nothing")

    def error(self) -> str:
        """The library's message for this bad file (paths shown relative to the checkpoint)."""
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "checkpoint"
            directory.mkdir()
            return str(self.exception(directory)).replace(str(directory), "checkpoint")


# ----------------------------------------------------------------------------- builders


def _config(directory: Path) -> None:
    def side() -> BertConfig:
        return BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1,
                          num_attention_heads=1, intermediate_size=4)

    EncoderDecoderConfig.from_encoder_decoder_configs(side(), side()).save_pretrained(directory)


def _safetensors(header: dict, data: bytes = b"", *, length: int | None = None,
                 raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _weights(blob: bytes) -> Callable[[Path], Callable[[], object]]:
    """A checkpoint whose model.safetensors is `blob`; read by opening every tensor."""

    def build(directory: Path) -> Callable[[], object]:
        _config(directory)
        (directory / SAFE_WEIGHTS_NAME).write_bytes(blob)
        return lambda: _read_all(directory)

    return build


def _read_all(directory: Path) -> None:
    with open_state_dict(directory) as reader:
        for key in reader:
            reader[key]


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _truncated(directory: Path) -> Callable[[], object]:
    write_checkpoint(directory, {"w": np.arange(16, dtype=np.float32)}, config={})
    path = directory / SAFE_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-10])
    return lambda: _read_all(directory)


def _sharded(directory: Path) -> None:
    tensors = {f"w{i}": np.full(8, i, np.float32) for i in range(3)}
    write_checkpoint(directory, tensors, config={}, max_shard_size=40)


def _index_edit(edit: Callable[[dict, Path], object]) -> Callable[[Path], Callable[[], object]]:
    def build(directory: Path) -> Callable[[], object]:
        _sharded(directory)
        index = directory / SAFE_WEIGHTS_INDEX_NAME
        data = json.loads(index.read_text())
        text = edit(data, directory)
        index.write_text(text if isinstance(text, str) else json.dumps(data))
        return lambda: _read_all(directory)

    return build


def _index_duplicate(data: dict, directory: Path) -> str:
    first = sorted(data["weight_map"].items())[0]
    body = ", ".join(f'"{k}": "{v}"' for k, v in [*data["weight_map"].items(), first])
    return '{"metadata": {}, "weight_map": {' + body + "}}"


def _index_missing_shard(data: dict, directory: Path) -> None:
    (directory / "model-00002-of-00003.safetensors").unlink()


def _index_wrong_shard(data: dict, directory: Path) -> None:
    data["weight_map"]["w0"] = "model-00002-of-00003.safetensors"


def _index_escapes(data: dict, directory: Path) -> None:
    data["weight_map"]["w0"] = "../elsewhere/model.safetensors"


def _config_json(text: str | dict, *, base: dict | None = None,
                 side: str | None = None) -> Callable[[Path], Callable[[], object]]:
    """config.json replaced by `text` (a dict is merged into a valid config, into `side`)."""

    def build(directory: Path) -> Callable[[], object]:
        _config(directory)
        path = directory / CONFIG_NAME
        if isinstance(text, dict):
            data = json.loads(path.read_text())
            target = data[side] if side else data
            target.update(text)
            for key in [k for k, v in text.items() if v is _DELETE]:
                del target[key]
            path.write_text(json.dumps(data))
        else:
            path.write_text(text)
        return lambda: EncoderDecoderConfig.from_pretrained(directory)

    return build


_DELETE = "<deleted>"


def _generation_json(text: str) -> Callable[[Path], Callable[[], object]]:
    def build(directory: Path) -> Callable[[], object]:
        (directory / GENERATION_CONFIG_NAME).write_text(text)
        return lambda: GenerationConfig.from_pretrained(directory)

    return build


class _Payload:
    """Unpickling this creates the marker file: the pickle runs code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_bin(directory: Path) -> Callable[[], object]:
    import torch

    _config(directory)
    torch.save({"w": _Payload(directory / MARKER)}, directory / WEIGHTS_NAME)
    return lambda: _read_all(directory)


def _h5(make: Callable[[object], None]) -> Callable[[Path], Callable[[], object]]:
    def build(directory: Path) -> Callable[[], object]:
        import h5py

        from encdec.convert.files import H5Reader

        path = directory / "tf_model.h5"
        with h5py.File(path, "w") as f:
            make(f)

        def read() -> None:
            reader = H5Reader(path)
            try:
                for key in reader.keys():
                    reader.get(key)
            finally:
                reader.close()

        return read

    return build


def _h5_no_layers(f) -> None:
    f.create_dataset("x", data=np.zeros(2))


def _h5_huge(f) -> None:
    f.attrs["layer_names"] = [b"encoder"]
    g = f.create_group("encoder")
    g.attrs["weight_names"] = [b"m/encoder/w:0"]
    g.create_dataset("m/encoder/w:0", shape=(1 << 20, 1 << 20), dtype="f4")  # stores nothing


def _bytes(name: str, blob: bytes, read: Callable[[Path], object]):
    def build(directory: Path) -> Callable[[], object]:
        (directory / name).write_bytes(blob)
        return lambda: read(directory / name)

    return build


def _read_h5(path: Path) -> None:
    from encdec.convert.files import H5Reader

    H5Reader(path).close()


def _read_msgpack(path: Path) -> None:
    from encdec.convert.files import read_msgpack

    read_msgpack(path)


def _msgpack_array(shape: list[int], dtype: str, data: bytes) -> bytes:
    import msgpack

    leaf = msgpack.ExtType(1, msgpack.packb((shape, dtype, data), use_bin_type=True))
    return msgpack.packb({"encoder": {"kernel": leaf}}, use_bin_type=True)


# ----------------------------------------------------------------------------- the cases

CASES: list[BadFile] = [
    # model.safetensors
    BadFile("safetensors-truncated", "model.safetensors cut short (10 bytes missing)",
            SAFE_WEIGHTS_NAME, _truncated),
    BadFile("safetensors-header-longer-than-file",
            "the 8-byte header length claims 2**40 bytes in a file of a few dozen",
            SAFE_WEIGHTS_NAME, _weights(_safetensors({"w": F32x2}, bytes(8), length=2**40))),
    BadFile("safetensors-empty", "model.safetensors of 0 bytes", SAFE_WEIGHTS_NAME,
            _weights(b"")),
    BadFile("safetensors-header-not-json", "the header is not JSON", SAFE_WEIGHTS_NAME,
            _weights(_safetensors({}, raw_header=b"{\"w\": [1, 2"))),
    BadFile("safetensors-duplicate-key", "the header names tensor 'w' twice", SAFE_WEIGHTS_NAME,
            _weights(_safetensors({}, bytes(8), raw_header=(
                b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')))),
    BadFile("safetensors-overlapping-offsets", "two tensors share bytes 4..8 of the data",
            SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"a": F32x2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                bytes(12)))),
    BadFile("safetensors-out-of-bounds", "a tensor's data_offsets end past the end of the file",
            SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, bytes(8)))),
    BadFile("safetensors-shape-disagrees", "shape [3] of F32 needs 12 bytes, the offsets give 8",
            SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)))),
    BadFile("safetensors-huge-shape", "shape [2**40, 2**40] (never allocated: the byte length "
            "is checked first)", SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}},
                bytes(8)))),
    BadFile("safetensors-unknown-dtype", "dtype 'F128'", SAFE_WEIGHTS_NAME,
            _weights(_safetensors({"w": {"dtype": "F128", "shape": [2],
                                         "data_offsets": [0, 8]}}, bytes(8)))),
    BadFile("safetensors-negative-offset", "data_offsets [8, 0] (end before begin)",
            SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8)))),
    BadFile("safetensors-gap", "4 bytes between two tensors belong to neither",
            SAFE_WEIGHTS_NAME, _weights(_safetensors(
                {"a": F32x2, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}},
                bytes(16)))),
    # model.safetensors.index.json
    BadFile("index-duplicate-key", "the index maps one tensor twice", SAFE_WEIGHTS_INDEX_NAME,
            _index_edit(_index_duplicate)),
    BadFile("index-missing-shard", "the index names a shard that is not there",
            "model-00002-of-00003.safetensors", _index_edit(_index_missing_shard)),
    BadFile("index-key-not-in-shard", "the index puts 'w0' in a shard that does not hold it",
            SAFE_WEIGHTS_INDEX_NAME, _index_edit(_index_wrong_shard)),
    BadFile("index-shard-outside", "the index points at '../elsewhere/model.safetensors'",
            SAFE_WEIGHTS_INDEX_NAME, _index_edit(_index_escapes)),
    BadFile("index-no-weight-map", "the index has no weight_map", SAFE_WEIGHTS_INDEX_NAME,
            _index_edit(lambda data, directory: "{}")),
    # pytorch_model.bin
    BadFile("bin-pickle-runs-code", "a pytorch_model.bin whose pickle would create a file "
            "(refused by torch.load(weights_only=True); nothing runs)", WEIGHTS_NAME,
            _pickle_bin),
    BadFile("bin-not-a-pickle", "pytorch_model.bin holding random bytes", WEIGHTS_NAME,
            lambda d: (_config(d), (d / WEIGHTS_NAME).write_bytes(b"\x80\x02garbage"),
                       lambda: _read_all(d))[-1]),
    # config.json
    BadFile("config-not-json", "config.json is not JSON", CONFIG_NAME, _config_json("{not json")),
    BadFile("config-duplicate-key", "config.json gives 'model_type' twice", CONFIG_NAME,
            _config_json('{"model_type": "encoder-decoder", "model_type": "bert"}')),
    BadFile("config-deeply-nested", "config.json nested 100000 levels deep", CONFIG_NAME,
            _config_json("[" * 100000 + "]" * 100000)),
    BadFile("config-missing-decoder", "an encoder-decoder config.json without 'decoder'",
            CONFIG_NAME, _config_json({"decoder": _DELETE}), ConfigError),
    BadFile("config-string-for-int", 'encoder.hidden_size is "4" (a string)', CONFIG_NAME,
            _config_json({"hidden_size": "4"}, side="encoder"), ConfigError),
    BadFile("config-float-for-int", "encoder.num_hidden_layers is 1.0", CONFIG_NAME,
            _config_json({"num_hidden_layers": 1.0}, side="encoder"), ConfigError),
    BadFile("config-bool-for-int", "decoder.vocab_size is true", CONFIG_NAME,
            _config_json({"vocab_size": True}, side="decoder"), ConfigError),
    BadFile("config-heads-do-not-divide", "encoder has 3 heads for hidden size 4",
            CONFIG_NAME, _config_json({"num_attention_heads": 3}, side="encoder"), ConfigError),
    BadFile("config-non-positive-size", "decoder.intermediate_size is 0", CONFIG_NAME,
            _config_json({"intermediate_size": 0}, side="decoder"), ConfigError),
    BadFile("config-unknown-activation", 'encoder.hidden_act is "swishy"', CONFIG_NAME,
            _config_json({"hidden_act": "swishy"}, side="encoder"), ConfigError),
    BadFile("config-dropout-out-of-range", "decoder.hidden_dropout_prob is 1.5", CONFIG_NAME,
            _config_json({"hidden_dropout_prob": 1.5}, side="decoder"), ConfigError),
    BadFile("config-negative-eps", "encoder.layer_norm_eps is -1e-12", CONFIG_NAME,
            _config_json({"layer_norm_eps": -1e-12}, side="encoder"), ConfigError),
    BadFile("config-id-out-of-range", "decoder_start_token_id 10 in a vocabulary of 10",
            CONFIG_NAME, _config_json({"decoder_start_token_id": 10}), ConfigError),
    BadFile("config-unknown-model-type", 'model_type "t5"', CONFIG_NAME,
            _config_json({"model_type": "t5"}, side="encoder"), ConfigError),
    # generation_config.json
    BadFile("generation-not-json", "generation_config.json is not JSON",
            GENERATION_CONFIG_NAME, _generation_json("{"), ConfigError),
    BadFile("generation-bad-value", "num_beams is 0", GENERATION_CONFIG_NAME,
            _generation_json('{"num_beams": 0}'), ConfigError),
    BadFile("generation-top-p", "top_p is 2", GENERATION_CONFIG_NAME,
            _generation_json('{"top_p": 2}'), ConfigError),
    # converter inputs
    BadFile("h5-not-hdf5", "tf_model.h5 holding random bytes", "tf_model.h5",
            _bytes("tf_model.h5", b"\x89HDF\r\n\x1a\n" + bytes(40), _read_h5)),
    BadFile("h5-not-keras", "an HDF5 file without tf-keras' layer_names", "tf_model.h5",
            _h5(_h5_no_layers)),
    BadFile("h5-huge-dataset", "an HDF5 dataset declaring 4 TiB that stores nothing",
            "tf_model.h5", _h5(_h5_huge)),
    BadFile("msgpack-garbage", "flax_model.msgpack holding random bytes", "flax_model.msgpack",
            _bytes("flax_model.msgpack", b"\xc1\xff\x00garbage", _read_msgpack)),
    BadFile("msgpack-shape-disagrees", "an array of shape [1000, 1000] with 8 bytes of data",
            "flax_model.msgpack", _bytes("flax_model.msgpack", _msgpack_array(
                [1000, 1000], "float32", bytes(8)), _read_msgpack)),
    BadFile("msgpack-object-dtype", "an array of dtype 'object'", "flax_model.msgpack",
            _bytes("flax_model.msgpack", _msgpack_array([1], "object", bytes(8)),
                   _read_msgpack)),
]
