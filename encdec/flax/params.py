"""The Flax NNX side of `encdec.core.modeling`: `assign` / `get` over the dotted paths of
`nnx.state(model, nnx.Param)`, plus the backbones' `from_pretrained` / `save_pretrained`.

Paths are `Dialect.NNX` paths (`encoder.layer.0.attention.self.query.kernel`): attribute names
as the reference's state-dict names, `nnx.List` indices as path segments, NNX leaf names.
Loading replaces one parameter's value at a time, so a load never holds two copies of the
weights (the model's random initial value of a parameter is dropped as soon as it is replaced).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from encdec.core import modeling
from encdec.core.checkpoint import CheckpointError
from encdec.core.config import ModelConfig
from encdec.core.modeling import Backend
from encdec.core.registry import initializers
from encdec.core.weights import Dialect, Table, leaf, leaf_rule, to_dialect

logger = logging.getLogger("encdec")


def variables(model: nnx.Module) -> dict[str, nnx.Param]:
    """Every parameter of `model` by dotted path (the very Variables the model holds)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(k) for k in path): var for path, var in flat}


def _node(model: nnx.Module, path: str) -> Any:
    """The attribute at dotted `path` (list indices as segments), or None."""
    node: Any = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part, None)
        if node is None:
            break
    return node


def _variable(model: nnx.Module, path: str) -> nnx.Param:
    node = _node(model, path)
    if not isinstance(node, nnx.Param):
        raise CheckpointError(f"{type(model).__name__} has no parameter {path!r}")
    return node


def assign(module: nnx.Module, path: str, array: np.ndarray) -> None:
    """Replace the value of the parameter at `path` with `array` (dialect layout)."""
    var = _variable(module, path)
    if tuple(array.shape) != tuple(var.shape):
        raise CheckpointError(f"{path}: got shape {tuple(array.shape)}, the model holds "
                              f"{tuple(var.shape)}")
    var.set_value(jnp.asarray(array, dtype=var.dtype))


def tie_params(module: nnx.Module, table: Table) -> None:
    """Make every tied parameter of `table` the very Variable of its source (followed to the
    owning parameter): LM-head biases and `tie_encoder_decoder`'s decoder copies; a Variable
    shared this way is one leaf of the model's state. A tie across layouts (an LM decoder's
    (in, vocab) kernel to the (vocab, in) word embeddings) holds no Variable: the head reads
    its source when computing logits (`LMDecoder`), so the source keeps its own path."""
    for p in table.params:
        if p.tied_to is None:
            continue
        src = p
        while src.tied_to is not None:
            src = table.by_name[src.tied_to]
        if leaf_rule(p.role, Dialect.NNX)[1] != leaf_rule(src.role, Dialect.NNX)[1]:
            continue
        owner_path, _, name = leaf(p, Dialect.NNX).rpartition(".")
        owner = _node(module, owner_path)
        if not isinstance(owner, nnx.Module):
            raise CheckpointError(f"{type(module).__name__} has no module {owner_path!r} for the "
                                  f"tied parameter {p.name!r}")
        setattr(owner, name, _variable(module, leaf(src, Dialect.NNX)))


def materialize(module: nnx.Module, tables: Iterable[tuple[nnx.Module, Table, ModelConfig]], *,
                rngs: nnx.Rngs) -> None:
    """Initialise every parameter of the given (submodule, table, config) triples and tie the
    tied ones (the end of each backbone's constructor)."""
    for sub, table, config in tables:
        init_params(sub, table, config, rngs=rngs)
        tie_params(sub, table)


def init_params(module: nnx.Module, table: Table, config: ModelConfig,
                names: Iterable[str] | None = None, *, rngs: nnx.Rngs) -> None:
    """The reference's init, as the registry states it (`encdec.core.registry.initializers`):
    normal draws (some rows zeroed, some std scaled), LayerNorm 1/0, biases 0, fixed tables;
    for the parameters of `table` (or those in `names`), in table order from the `params`
    stream of `rngs`."""
    wanted = None if names is None else set(names)
    for p, init in initializers(table, config, wanted):
        var = _variable(module, leaf(p, Dialect.NNX))
        if init.kind == "normal":
            value = init.std * jax.random.normal(rngs.params(), p.shape, var.dtype)
            if init.zero_row is not None:
                value = value.at[init.zero_row].set(0.0)
        elif init.kind == "array":
            value = jnp.asarray(init.array, var.dtype)
        else:
            value = (jnp.ones if init.kind == "ones" else jnp.zeros)(p.shape, var.dtype)
        var.set_value(to_dialect(p, value, Dialect.NNX))


def get(module: nnx.Module, path: str) -> np.ndarray:
    """The parameter at `path` as numpy (bfloat16 as `ml_dtypes.bfloat16`)."""
    return np.asarray(_variable(module, path)[...])


def host_array(x: Any) -> np.ndarray | None:
    """The values of an input on the host, for `encdec.core.validation`; None for a tracer
    (inside `nnx.jit` / `jax.jit`): shapes and dtypes are still checked there."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def jax_dtype(name: str) -> jnp.dtype:
    """The jax dtype of a canonical dtype name (`encdec.core.modeling.dtype_name`); float64
    only where jax runs it (`jax_enable_x64`), else an error naming the backend."""
    if name == "float64" and not jax.config.read("jax_enable_x64"):
        raise ValueError("dtype='float64': the flax backend computes in float64 only with "
                         "jax.config.update('jax_enable_x64', True)")
    return jnp.dtype(name)


def dtype_of(module: nnx.Module) -> str:
    """The canonical name of the dtype `module`'s parameters are held in."""
    for var in variables(module).values():
        return jnp.dtype(var.dtype).name
    return "float32"


def cast(module: nnx.Module, name: str | None) -> None:
    """Hold every parameter of `module` in dtype `name` (None: unchanged), abstract ones
    (`abstract`) included, and compute in it: activations follow the parameters' dtype, and
    embedding lookups (whose `dtype` is fixed at construction) are set to it."""
    if name is None:
        return
    dtype = jax_dtype(name)
    for var in variables(module).values():
        value = var.get_value()
        if value.dtype != dtype:
            var.set_value(jax.ShapeDtypeStruct(value.shape, dtype)
                          if isinstance(value, jax.ShapeDtypeStruct) else value.astype(dtype))
    for _, m in nnx.iter_modules(module):
        if isinstance(m, nnx.Embed):
            m.dtype = m.param_dtype = dtype


def abstract(build: Callable[[], nnx.Module], rngs: nnx.Rngs | None = None) -> nnx.Module:
    """`build()` without computing any initial weight (`nnx.eval_shape`): parameters hold only
    shapes until `assign` fills them from a checkpoint; the dropout RNG streams get concrete
    keys (from `rngs` when given)."""
    model = nnx.eval_shape(build)
    key = jax.random.key(0) if rngs is None else rngs()
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.RngState))):
        if isinstance(var, nnx.RngKey):
            var.set_value(jax.random.fold_in(key, i))
        else:  # RngCount
            var.set_value(jnp.zeros(var.shape, var.dtype))
    return model


def check_assigned(model: nnx.Module) -> None:
    """Raise if a parameter of an `abstract` model was never assigned."""
    left = [path for path, var in variables(model).items()
            if isinstance(var.get_value(), jax.ShapeDtypeStruct)]
    if left:
        raise CheckpointError(f"{type(model).__name__}: parameters not loaded: {left[:20]}")


# The parameter hooks of encdec.core.modeling's loads (EncoderDecoderModel adds its own; the
# random init of what a checkpoint lacks draws from the caller's rngs, default nnx.Rngs(0))
BACKEND = Backend(dialect=Dialect.NNX, assign=assign,
                  init=functools.partial(init_params, rngs=nnx.Rngs(0)), tie=tie_params,
                  dtype_of=dtype_of, eval=lambda model: model.eval(),
                  check_assigned=check_assigned)


def load_backbone(cls: type, path_or_id: str | os.PathLike, *, rngs: nnx.Rngs | None = None,
                  output_loading_info: bool = False, **overrides: Any):
    """`cls.from_pretrained` (`encdec.core.modeling.load_backbone`): a single-model checkpoint,
    non-strict (heads or cross-attention it lacks get the reference's init, drawn from `rngs`,
    and are reported), tied, returned in eval mode."""
    def build(config, dtype):
        model = abstract(lambda: cls(config), rngs)
        cast(model, dtype)
        return model

    backend = dataclasses.replace(BACKEND, init=functools.partial(
        init_params, rngs=nnx.Rngs(0) if rngs is None else rngs))
    model, report = modeling.load_backbone(backend, cls, build, path_or_id, **overrides)
    return (model, report) if output_loading_info else model


def save_backbone(model: nnx.Module, directory: str | os.PathLike,
                  max_shard_size: int | str = "5GB", reference_class: str | None = None):
    """`save_pretrained` of a backbone (core.modeling.save_backbone); `reference_class` is the
    reference's class name written to `architectures` (default: the model's class name)."""
    return modeling.save_backbone(directory, reference_class or type(model).__name__,
                                  model.config, model.table(), Dialect.NNX,
                                  functools.partial(get, model), max_shard_size=max_shard_size,
                                  dtype=dtype_of(model))
