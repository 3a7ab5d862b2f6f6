"""Every checkpoint reader as a fuzz target: `run(target, data, directory)` writes `data` where the
reader looks for it and reads it as a user would. The only acceptable outcomes are the library's
own error naming the file, or data that is no larger than the file (nothing allocated from a
size the file merely declares). Shared by the hypothesis tests (tests/core/test_readers_fuzz.py)
and the atheris target (tests/fuzz/fuzz_readers.py)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from encdec.core import ConfigError, EncoderDecoderConfig, GenerationConfig
from encdec.core.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    open_state_dict,
    write_checkpoint,
)
from encdec.core.config import ModelConfig

ALLOWED = (CheckpointError, ConfigError)
SHARD = "model-00001-of-00001.safetensors"  # the shard an index under test may name


def _weights(directory: Path) -> list[np.ndarray]:
    with open_state_dict(directory) as reader:
        return [reader[key] for key in reader]


def _h5(directory: Path) -> list[np.ndarray]:
    from encdec.convert.files import H5Reader

    reader = H5Reader(directory / "tf_model.h5")
    try:
        return [reader.get(key) for key in reader.keys()]
    finally:
        reader.close()


def _msgpack(directory: Path) -> list[np.ndarray]:
    from encdec.convert.files import read_msgpack

    return list(read_msgpack(directory / "flax_model.msgpack").values())


def _prepare_index(directory: Path) -> None:
    write_checkpoint(directory / "shard", {"w": np.arange(4, dtype=np.float32),
                                           "b": np.ones(2, np.int64)}, config={})
    (directory / "shard" / SAFE_WEIGHTS_NAME).rename(directory / SHARD)


# target -> (file name, preparation of the directory, the read)
TARGETS: dict[str, tuple[str, Callable[[Path], None] | None, Callable[[Path], object]]] = {
    "safetensors": (SAFE_WEIGHTS_NAME, None, _weights),
    "index": (SAFE_WEIGHTS_INDEX_NAME, _prepare_index, _weights),
    "config": (CONFIG_NAME, None, EncoderDecoderConfig.from_pretrained),
    "model_config": (CONFIG_NAME, None, ModelConfig.from_pretrained),
    "generation_config": (GENERATION_CONFIG_NAME, None, GenerationConfig.from_pretrained),
    "h5": ("tf_model.h5", None, _h5),
    "msgpack": ("flax_model.msgpack", None, _msgpack),
}


class Finding(AssertionError):
    """A reader misbehaved: another exception, an error not naming the file, or a result
    larger than the file."""


def run(target: str, data: bytes, directory: Path) -> None:
    """Write `data` as `target`'s file in the empty `directory` and read it."""
    name, prepare, read = TARGETS[target]
    if prepare is not None:
        prepare(directory)
    path = directory / name
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the library must not warn about a bad file either
            result = read(directory)
    except ALLOWED as e:
        if name not in str(e) and SHARD not in str(e):
            raise Finding(f"{target}: {type(e).__name__} does not name the file: {e}") from e
        return
    except Exception as e:
        raise Finding(f"{target}: {type(e).__name__}: {e}") from e
    if isinstance(result, list):
        size = len(data) + ((directory / SHARD).stat().st_size if target == "index" else 0)
        for array in result:
            if not isinstance(array, np.ndarray) or array.nbytes > size:
                raise Finding(f"{target}: returned {type(array).__name__} of "
                              f"{getattr(array, 'nbytes', '?')} bytes from a {size}-byte file")


def seeds(directory: Path) -> dict[str, list[bytes]]:
    """Valid files of every target (the fuzzers mutate them), built in `directory`."""
    from encdec.convert.files import write_h5, write_msgpack
    from encdec.core import BertConfig, GPT2Config

    tensors = {"encoder/w": np.arange(6, dtype=np.float32).reshape(2, 3),
               "decoder/b": np.ones(3, np.float16), "decoder/i": np.arange(2, dtype=np.int64)}
    write_checkpoint(directory / "c", {k.replace("/", "."): v for k, v in tensors.items()},
                     config={})
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=4), GPT2Config(vocab_size=10, n_embd=4, n_layer=1, n_head=2))
    config.decoder_start_token_id = 1
    write_h5(directory / "tf_model.h5", list(tensors), tensors.__getitem__)
    write_msgpack(directory / "flax_model.msgpack", list(tensors), tensors.__getitem__)
    index = {"metadata": {"total_size": 24}, "weight_map": {"w": SHARD, "b": SHARD}}
    return {
        "safetensors": [(directory / "c" / SAFE_WEIGHTS_NAME).read_bytes()],
        "index": [json.dumps(index).encode()],
        "config": [config.to_json_string().encode()],
        "model_config": [BertConfig(vocab_size=10, hidden_size=4, num_attention_heads=2)
                         .to_json_string().encode(), config.decoder.to_json_string().encode()],
        "generation_config": [json.dumps({"num_beams": 4, "max_new_tokens": 8, "top_p": 0.9,
                                          "eos_token_id": [1, 2],
                                          "bad_words_ids": [[3]]}).encode()],
        "h5": [(directory / "tf_model.h5").read_bytes()],
        "msgpack": [(directory / "flax_model.msgpack").read_bytes()],
    }
