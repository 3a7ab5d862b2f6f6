"""The Keras side of `encdec.core.modeling`: `assign` / `get` over `Dialect.KERAS` paths, the
reference's init drawn from the registry's data (`init_params`), tying through the table
(`tie_params`), and the backbones' `from_pretrained` / `save_pretrained`.

A path is found by walking the layer tree by attribute names (`encoder.layer.0.attention.self.
query.kernel`), never through Keras' auto-generated variable names: built-in leaf layers
(`Dense`, `LayerNormalization`, `Embedding`) contribute their variables under their own names
(`kernel`/`bias`, `gamma`/`beta`, `embeddings`), and a lone `add_weight` variable its attribute
name (`cls.predictions.bias`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from encdec.core import modeling
from encdec.core.checkpoint import CheckpointError
from encdec.core.config import ModelConfig
from encdec.core.modeling import Backend
from encdec.core.registry import architecture, initializers
from encdec.core.weights import Dialect, Table, leaf, leaf_rule, to_dialect

logger = logging.getLogger("encdec")

_CHUNK_BYTES = 16 << 20  # assign() writes tensors larger than this in row slices
_LEAF_LAYERS = (keras.layers.Dense, keras.layers.LayerNormalization, keras.layers.Embedding)
_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _walk(model: keras.layers.Layer) -> dict[str, tuple[keras.layers.Layer, str]]:
    """path -> (owning layer, attribute name) of every variable of `model`."""
    out: dict[str, tuple[keras.layers.Layer, str]] = {}

    def visit(obj: keras.layers.Layer, prefix: str) -> None:
        if isinstance(obj, _LEAF_LAYERS):
            attrs = {id(v): k for k, v in vars(obj).items() if isinstance(v, keras.Variable)}
            for v in obj.weights:
                out[prefix + v.name] = (obj, attrs[id(v)])
            return
        for name, value in vars(obj).items():
            if name.startswith("_"):
                continue
            if isinstance(value, keras.Variable):
                out[prefix + name] = (obj, name)
            elif isinstance(value, keras.layers.Layer):
                visit(value, f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)) and value \
                    and all(isinstance(x, keras.layers.Layer) for x in value):
                for i, x in enumerate(value):
                    visit(x, f"{prefix}{name}.{i}.")

    visit(model, "")
    return out


def variables(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """path -> variable for every weight of `model`, by attribute names (cached per model)."""
    if model in _MAPS:
        return _MAPS[model]
    out = {path: getattr(owner, attr) for path, (owner, attr) in _walk(model).items()}
    if not out:
        raise CheckpointError(f"{type(model).__name__} has no variables: build it first")
    _MAPS[model] = out
    return out


def assign(module: keras.layers.Layer, path: str, array: np.ndarray) -> None:
    """Write `array` (dialect layout) into the variable at `path`."""
    var = _lookup(module, path)
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


def get(module: keras.layers.Layer, path: str) -> np.ndarray:
    """The variable at `path` as numpy (bfloat16 as `ml_dtypes.bfloat16`)."""
    return _lookup(module, path).numpy()


def host_array(x: Any) -> np.ndarray | None:
    """The values of an input on the host, for `encdec.core.validation`; None for a symbolic
    tensor (inside a `tf.function`, Keras' compiled `fit`): shapes and dtypes are still
    checked there."""
    if isinstance(x, keras.KerasTensor) or (tf.is_tensor(x) and not tf.executing_eagerly()):
        return None
    return np.asarray(x)


def dtype_of(module: keras.layers.Layer) -> str:
    """The canonical name of the dtype `module`'s variables are held in."""
    for var in variables(module).values():
        return keras.backend.standardize_dtype(var.dtype)
    return "float32"


@contextlib.contextmanager
def default_dtype(name: str | None) -> Iterator[None]:
    """Layers built inside this block hold their variables and compute in dtype `name` (None:
    unchanged): Keras' global dtype policy for the duration, restored afterwards (as torch's
    default dtype in `encdec.pt.params.default_dtype`)."""
    old = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _lookup(model: keras.layers.Layer, path: str) -> keras.Variable:
    try:
        return variables(model)[path]
    except KeyError:
        raise CheckpointError(f"{type(model).__name__} has no variable {path!r}") from None


# --- building, init and tying ---------------------------------------------------------------

_state = threading.local()


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside this block, models keep the zeros their variables are created with instead of
    drawing the reference's init: the caller is about to overwrite every one from a checkpoint
    (drawing them would cost time, and the generator's temporaries raise the load's peak)."""
    old = getattr(_state, "skip", False)
    _state.skip = True
    try:
        yield
    finally:
        _state.skip = old


def skipping_init() -> bool:
    """Whether constructors should leave weights uninitialised (see `skip_init`)."""
    return getattr(_state, "skip", False)


class constructing:  # noqa: N801 - used as `with params.constructing() as c:`
    """Only the outermost model builds, inits and ties the variables of what it contains.

    `with constructing() as c: ...build sublayers...` then `if c.outermost: materialize(...)`.
    """

    def __enter__(self) -> constructing:
        self.outermost = getattr(_state, "depth", 0) == 0
        _state.depth = getattr(_state, "depth", 0) + 1
        return self

    def __exit__(self, *exc) -> None:
        _state.depth -= 1


def one_token(config: ModelConfig) -> dict[str, tf.Tensor]:
    """A backbone's inputs for the call that creates its variables (cross-attention included)."""
    inputs = {"input_ids": tf.zeros((1, 1), tf.int32)}
    if config.add_cross_attention or architecture(config).always_cross_attention:
        inputs["encoder_hidden_states"] = tf.zeros((1, 1, config.hidden_size))
    return inputs


def materialize(module: keras.layers.Layer,
                tables: Iterable[tuple[keras.layers.Layer, Table, ModelConfig]]) -> None:
    """Once `module`'s variables exist (Keras creates them on the first call): unless in
    `skip_init`, draw the init of every (sublayer, table, config) triple; tie the tied ones."""
    for sub, table, config in tables:
        if not skipping_init():
            init_params(sub, table, config)
        tie_params(sub, table)


def init_params(module: keras.layers.Layer, table: Table, config: ModelConfig,
                names: Iterable[str] | None = None) -> None:
    """The reference's init, as the registry's data (`registry.initializers`): normal draws
    (a zeroed padding row where the reference has one), ones, zeros or a fixed table."""
    found = variables(module)
    for p, init in initializers(table, config, None if names is None else set(names)):
        var = found[leaf(p, Dialect.KERAS)]
        if init.kind == "normal":  # i.i.d.: drawn in the variable's own layout
            value = tf.random.normal(var.shape, stddev=init.std, dtype=var.dtype)
            if init.zero_row is not None:  # the canonical row: a column when transposed
                axis = 1 if leaf_rule(p.role, Dialect.KERAS)[1] else 0
                keep = tf.not_equal(tf.range(var.shape[axis]), init.zero_row)
                value = value * tf.cast(keep[None, :] if axis else keep[:, None], var.dtype)
            var.assign(value)
        elif init.kind == "array":
            var.assign(to_dialect(p, init.array, Dialect.KERAS).astype(var.dtype))
        else:
            var.assign(tf.fill(var.shape, tf.constant(1.0 if init.kind == "ones" else 0.0,
                                                      var.dtype)))


def tie_params(module: keras.layers.Layer, table: Table) -> None:
    """Make every tied parameter of `table` that `model` holds as a variable (the decoder copies
    of `tie_encoder_decoder`, a decoder bias that is the head's `bias`) the very variable of its
    source. A tied LM-head matrix holds none: the head reads the word embeddings (its layout
    is the transpose of a kernel's)."""
    found = _walk(module)
    for p in table.params:
        path = leaf(p, Dialect.KERAS)
        if p.tied_to is None or path not in found:
            continue
        owner, attr = found[path]
        src_owner, src_attr = found[leaf(table.by_name[p.tied_to], Dialect.KERAS)]
        old, src = getattr(owner, attr), getattr(src_owner, src_attr)
        if old is src:
            continue
        # Keras' list of the layer's own variables: the source replaces the dropped one
        owner._untrack_variable(old)
        locked, owner._tracker.locked = owner._tracker.locked, False
        owner._track_variable(src)
        owner._tracker.locked = locked
        object.__setattr__(owner, attr, src)
    _MAPS.clear()  # cached path maps may hold the replaced variables


def check_assigned(model: keras.layers.Layer) -> None:
    """Nothing to check: every variable exists once a Keras model is built, and a load writes
    each one (a checkpoint's missing key is an error or, for a backbone, an init)."""


# The parameter hooks of encdec.core.modeling's loads (EncoderDecoderModel adds its own).
# Inference mode needs no step: Keras runs dropout only in a call with `training=True` (`fit`).
BACKEND = Backend(dialect=Dialect.KERAS, assign=assign, init=init_params, tie=tie_params,
                  dtype_of=dtype_of, eval=lambda model: None, check_assigned=check_assigned)


def load_backbone(cls: type, path_or_id: str | os.PathLike, *,
                  output_loading_info: bool = False, **overrides: Any):
    """`cls.from_pretrained` (`encdec.core.modeling.load_backbone`): a single-model checkpoint,
    non-strict (heads or cross-attention it lacks get the reference's init and are reported),
    tied, in inference mode."""
    def build(config, dtype):
        with skip_init(), default_dtype(dtype):
            return cls(config)

    model, report = modeling.load_backbone(BACKEND, cls, build, path_or_id, **overrides)
    return (model, report) if output_loading_info else model


def save_backbone(model: keras.Model, directory: str | os.PathLike,
                  max_shard_size: int | str = "5GB", reference_class: str | None = None):
    """`save_pretrained` of a backbone (core.modeling.save_backbone); `reference_class` is the
    reference's class name written to `architectures` (default: the model's class name)."""
    name = reference_class or type(model).__name__
    return modeling.save_backbone(directory, name, model.config, model.table(),
                                  Dialect.KERAS, functools.partial(get, model),
                                  max_shard_size=max_shard_size, dtype=dtype_of(model))
