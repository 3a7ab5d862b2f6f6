"""The PyTorch side of `encdec.core.modeling`: `assign` / `get` over state-dict paths, plus
table-driven weight init (the reference's `_init_weights`) and weight tying.

Paths are `Dialect.PT` paths, i.e. the reference's state-dict names. Loading writes one tensor
at a time with `param.copy_` into storage allocated once (models are built on the meta device
and materialised with `to_empty`), so a load never holds two copies of the weights.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from encdec.core import modeling
from encdec.core.checkpoint import CheckpointError
from encdec.core.config import ModelConfig
from encdec.core.modeling import Backend
from encdec.core.registry import initializers
from encdec.core.weights import Dialect, Table

logger = logging.getLogger("encdec")

_state = threading.local()


def assign(module: nn.Module, path: str, array: np.ndarray) -> None:
    """Copy `array` (dialect layout) into the parameter at `path`, in place."""
    param = module.get_parameter(path)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.asarray(array)))


def get(module: nn.Module, path: str) -> np.ndarray:
    """The parameter at `path` as numpy (no copy for a contiguous CPU float tensor; bfloat16
    as an `ml_dtypes.bfloat16` view of the same bits)."""
    t = module.get_parameter(path).detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes  # numpy has no bfloat16

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def host_array(x: Any) -> np.ndarray | None:
    """The values of an input on the host, for `encdec.core.validation`; None inside a
    `torch.compile` trace (shapes and dtypes are still checked there)."""
    if torch.compiler.is_compiling():
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a canonical dtype name (`encdec.core.modeling.dtype_name`)."""
    return getattr(torch, name)


def dtype_of(module: nn.Module) -> str:
    """The canonical name of the dtype `module`'s floating parameters are held in."""
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"


@contextlib.contextmanager
def default_dtype(name: str | None) -> Iterator[None]:
    """Parameters created inside this block are created in dtype `name` (None: unchanged),
    so a model loaded in bfloat16 never allocates float32 weights (the reference's
    `local_torch_dtype`)."""
    old = torch.get_default_dtype()
    if name is not None:
        torch.set_default_dtype(torch_dtype(name))
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Inside this block, model constructors allocate weights but leave them uninitialised
    (the caller is about to overwrite them from a checkpoint)."""
    old = getattr(_state, "skip", False)
    _state.skip = True
    try:
        yield
    finally:
        _state.skip = old


def skipping_init() -> bool:
    """Whether constructors should leave weights uninitialised (see `skip_init`)."""
    return getattr(_state, "skip", False)


def materialize(module: nn.Module, tables: Iterable[tuple[nn.Module, Table, ModelConfig]]) -> None:
    """Allocate a meta-device module on CPU, then (unless in `skip_init`) initialise every
    parameter of the given (submodule, table, config) triples and tie the tied ones."""
    module.to_empty(device="cpu")
    for sub, table, config in tables:
        if not skipping_init():
            init_params(sub, table, config)
        tie_params(sub, table)


def init_params(module: nn.Module, table: Table, config: ModelConfig,
                names: Iterable[str] | None = None) -> None:
    """The reference's init, as the registry states it (`encdec.core.registry.initializers`):
    normal draws (some rows zeroed, some std scaled), LayerNorm 1/0, biases 0, fixed tables."""
    wanted = None if names is None else set(names)
    with torch.no_grad():
        for p, init in initializers(table, config, wanted):
            t = module.get_parameter(p.name)
            if init.kind == "normal":
                t.normal_(0.0, init.std)
                if init.zero_row is not None:
                    t[init.zero_row].zero_()
            elif init.kind == "ones":
                t.fill_(1.0)
            elif init.kind == "zeros":
                t.zero_()
            else:  # "array"
                t.copy_(torch.from_numpy(init.array))


def tie_params(module: nn.Module, table: Table) -> None:
    """Make every tied parameter of `table` the very Parameter object of its source."""
    for p in table.params:
        if p.tied_to is not None:
            owner_path, _, leaf = p.name.rpartition(".")
            setattr(module.get_submodule(owner_path), leaf, module.get_parameter(p.tied_to))


class constructing:  # noqa: N801 - used as `with params.constructing() as c:`
    """Build parameters on the meta device; only the outermost model allocates and inits them.

    `with constructing() as c: ...build submodules...` then `if c.outermost: materialize(...)`.
    """

    def __enter__(self) -> constructing:
        self.outermost = getattr(_state, "depth", 0) == 0
        _state.depth = getattr(_state, "depth", 0) + 1
        self._device = torch.device("meta")
        self._device.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._device.__exit__(*exc)
        _state.depth -= 1


def check_assigned(model: nn.Module) -> None:
    """Raise naming any parameter never allocated (built under `skip_init`, never loaded)."""
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"{type(model).__name__}: parameters never allocated: {left[:20]}")


# The parameter hooks of encdec.core.modeling's loads (EncoderDecoderModel adds its own)
BACKEND = Backend(dialect=Dialect.PT, assign=assign, init=init_params, tie=tie_params,
                  dtype_of=dtype_of, eval=lambda model: model.eval(),
                  check_assigned=check_assigned)


def load_backbone(cls: type, path_or_id, *, output_loading_info: bool = False, **overrides):
    """`cls.from_pretrained` (`encdec.core.modeling.load_backbone`): a single-model checkpoint,
    non-strict (heads or cross-attention it lacks get the reference's init and are reported),
    tied, returned in eval mode."""
    def build(config, dtype):
        with skip_init(), default_dtype(dtype):
            return cls(config)

    model, report = modeling.load_backbone(BACKEND, cls, build, path_or_id, **overrides)
    return (model, report) if output_loading_info else model


def save_backbone(model: nn.Module, directory, max_shard_size: int | str = "5GB",
                  reference_class: str | None = None):
    """`save_pretrained` of a backbone (core.modeling.save_backbone); `reference_class` is the
    reference's class name written to `architectures` (default: the model's class name)."""
    name = reference_class or type(model).__name__
    return modeling.save_backbone(directory, name, model.config, model.table(),
                                  Dialect.PT, functools.partial(get, model),
                                  max_shard_size=max_shard_size, dtype=dtype_of(model))
