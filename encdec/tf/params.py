"""The Keras side of `encdec.core.modeling`: `assign` / `get` over `Dialect.KERAS` paths, model
building, and the backbones' `from_pretrained` / `save_pretrained`.

A path is found by walking the layer tree by attribute names (`encoder.layer.0.attention.self.
query.kernel`), never through Keras' auto-generated variable names: built-in leaf layers
(`Dense`, `LayerNormalization`, `Embedding`) contribute their variables under their own names
(`kernel`/`bias`, `gamma`/`beta`, `embeddings`), and a lone `add_weight` variable its attribute
name (`cls.predictions.bias`).
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from encdec.core import modeling
from encdec.core.checkpoint import CheckpointError
from encdec.core.config import ModelConfig
from encdec.core.modeling import load_backbone_weights, read_backbone_config
from encdec.core.weights import Dialect

logger = logging.getLogger("encdec")

_CHUNK_BYTES = 16 << 20  # assign() writes tensors larger than this in row slices
_LEAF_LAYERS = (keras.layers.Dense, keras.layers.LayerNormalization, keras.layers.Embedding)
_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def variables(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """path -> variable for every weight of `model`, by attribute names (cached per model)."""
    if model in _MAPS:
        return _MAPS[model]
    out: dict[str, keras.Variable] = {}

    def visit(obj: keras.layers.Layer, prefix: str) -> None:
        if isinstance(obj, _LEAF_LAYERS):
            for v in obj.weights:
                out[prefix + v.name] = v
            return
        for name, value in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(value, keras.Variable):
                out[prefix + name] = value
            elif isinstance(value, keras.layers.Layer):
                visit(value, f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)) and value \
                    and all(isinstance(x, keras.layers.Layer) for x in value):
                for i, x in enumerate(value):
                    visit(x, f"{prefix}{name}.{i}.")

    visit(model, "")
    if not out:
        raise CheckpointError(f"{type(model).__name__} has no variables: build it first")
    _MAPS[model] = out
    return out


def assign(model: keras.layers.Layer, path: str, array: np.ndarray) -> None:
    """Write `array` (dialect layout) into the variable at `path`."""
    var = _lookup(model, path)
    if tuple(var.shape) != tuple(array.shape):
        raise CheckpointError(f"{path}: variable has shape {tuple(var.shape)}, "
                              f"got {tuple(array.shape)}")
    array = np.asarray(array, dtype=var.dtype)
    rows = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes)) if array.ndim else 1
    if array.ndim == 0 or rows >= len(array):
        var.assign(array)
        return
    # large tensors in row slices: a whole-tensor assign converts the array to a TF tensor
    # first, so the load's peak would hold each large tensor three times
    target = var.value if hasattr(var, "value") else var
    for start in range(0, len(array), rows):
        target[start:start + rows].assign(array[start:start + rows])


def get(model: keras.layers.Layer, path: str) -> np.ndarray:
    """The variable at `path` as numpy."""
    return _lookup(model, path).numpy()


def _lookup(model: keras.layers.Layer, path: str) -> keras.Variable:
    try:
        return variables(model)[path]
    except KeyError:
        raise CheckpointError(f"{type(model).__name__} has no variable {path!r}") from None


def build(model: keras.Model, config: ModelConfig) -> None:
    """Create a backbone's variables with a one-token call (cross-attention included)."""
    states = (tf.zeros((1, 1, config.hidden_size)) if config.add_cross_attention else None)
    model(tf.zeros((1, 1), tf.int32), encoder_hidden_states=states, use_cache=False)


def load_backbone(cls: type, path_or_id: str | os.PathLike, *,
                  output_loading_info: bool = False, **overrides: Any):
    """`cls.from_pretrained`: a single-model checkpoint, non-strict (heads or cross-attention
    the checkpoint lacks keep their random init and are reported), in inference mode."""
    directory, config = read_backbone_config(path_or_id, expect=cls.config_class, **overrides)
    model = cls(config)
    report = load_backbone_weights(model.table(), directory, Dialect.KERAS,
                                   functools.partial(assign, model), cls.__name__)
    return (model, report) if output_loading_info else model


def save_backbone(model: keras.Model, directory: str | os.PathLike,
                  max_shard_size: int | str = "5GB"):
    """`save_pretrained` of a backbone (core.modeling.save_backbone)."""
    return modeling.save_backbone(directory, type(model).__name__, model.config, model.table(),
                                  Dialect.KERAS, functools.partial(get, model),
                                  max_shard_size=max_shard_size)
