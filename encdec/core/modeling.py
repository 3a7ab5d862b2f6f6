"""Backend-independent steps of `from_pretrained`, `from_encoder_decoder_pretrained` and
`save_pretrained` (the reference's `EncoderDecoderModel` class methods).

A backend supplies a `Backend` (its dialect and a few hooks: build, assign, initialise, cast,
tie, evaluate); the steps are written once here: the keyword arguments checked before any file
is read (`check_kwargs`), the composite load (`load_pretrained`) and the last steps of every
load (`finish`: tied weights tied, every parameter assigned, inference mode, as the reference
returns a model). Warm start is `encdec.core.warm_start`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    CheckpointError,
    open_state_dict,
    read_config_dict,
    resolve_checkpoint,
    write_checkpoint,
)
from .config import (
    ConfigError,
    EncoderDecoderConfig,
    GenerationConfig,
    ModelConfig,
    config_from_dict,
)
from .registry import architecture, config_classes, encoder_decoder_table
from .tokenizer_files import Tokenizers
from .weights import (
    Dialect,
    LoadReport,
    Table,
    export_state,
    load_state,
)

logger = logging.getLogger("encdec")

Assign = Callable[[str, np.ndarray], None]
Get = Callable[[str], np.ndarray]


def _composite_only(*args: Any) -> Any:
    raise TypeError("this Backend serves backbone loads only: build, cast and check_decoder "
                    "are set by the backend's EncoderDecoderModel")


@dataclass(frozen=True)
class Backend:
    """What a framework supplies to the shared loading steps; `model` is its composite or a
    backbone, `path` a parameter's path in `dialect`, arrays in its layout. Each backend's
    `params.BACKEND` holds the parameter hooks; its `EncoderDecoderModel` adds the composite's
    (`build`, `cast`, `check_decoder`) with `dataclasses.replace`."""

    dialect: Dialect
    assign: Callable[[Any, str, np.ndarray], None]
    # (module, table, config, canonical names): the reference's init of those parameters
    init: Callable[[Any, Table, ModelConfig, list[str]], None]
    tie: Callable[[Any, Table], None]  # tie the tied parameters of a model's table
    dtype_of: Callable[[Any], str]  # the canonical name of the dtype a model holds
    eval: Callable[[Any], None]  # inference mode: dropout off
    check_assigned: Callable[[Any], None]  # raise naming any parameter never written
    # (config, dtype, encoder, decoder) -> the composite around the given backbones (None:
    # built from its config), its other weights allocated in `dtype`, left uninitialised
    build: Callable[[EncoderDecoderConfig, str, Any, Any], Any] = _composite_only
    cast: Callable[[Any, str], None] = _composite_only  # hold a given backbone in that dtype
    check_decoder: Callable[[Any], None] = _composite_only  # refuse one without cross-attention


def finish(backend: Backend, model: Any) -> Any:
    """The last steps of every load, composite or backbone, as the reference returns a model:
    tied weights tied, every parameter assigned, inference mode (dropout off)."""
    backend.tie(model, model.table())
    backend.check_assigned(model)
    backend.eval(model)
    return model


def load_pretrained(backend: Backend, path_or_id: str | os.PathLike, *,
                    config: EncoderDecoderConfig | None = None,
                    caller: str = "EncoderDecoderModel.from_pretrained",
                    **config_overrides: Any) -> tuple[Any, LoadReport]:
    """`EncoderDecoderModel.from_pretrained` in every backend: the checkpoint's config (or
    `config`) with `config_overrides` (EncoderDecoderConfig fields, `dtype=`; anything else a
    TypeError before any file is read), the model built without init in the dtype to load in,
    every weight loaded (strict), then `finish`. Returns the model and its load report."""
    pre = read_pretrained(path_or_id, config, caller=caller, **config_overrides)
    model = backend.build(pre.config, pre.dtype, None, None)
    model.generation_config = pre.generation_config
    model.tokenizers = Tokenizers.of_checkpoint(pre.directory)
    report = load_weights(model.table(), pre.directory, backend.dialect,
                          lambda path, a: backend.assign(model, path, a), strict=True)
    return finish(backend, model), report


@dataclass
class Pretrained:
    """A resolved composite checkpoint: where it is, its configs and the dtype to load it in."""

    directory: Path
    config: EncoderDecoderConfig
    generation_config: GenerationConfig
    dtype: str = "float32"


# --- dtype: the reference's `dtype=` / `torch_dtype=` loader argument -------------------------

# the floating dtypes a model can be loaded in, under the names torch gives them (the reference
# accepts any `torch.<name>`): canonical name per alias
DTYPES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
          "float16": "float16", "half": "float16", "float64": "float64", "double": "float64"}


def dtype_name(value: Any, argument: str = "dtype") -> str:
    """"auto" or the canonical name ("bfloat16", "float32", ...) of a dtype given as a string,
    a framework dtype (torch.bfloat16, tf.bfloat16, jnp.bfloat16, np.float32) or the
    reference's per-module dict (its "" entry, as the reference); anything else is a
    ValueError naming `argument` and the value."""
    given = value
    if isinstance(value, dict):
        value = value.get("", "float32")
    if isinstance(value, str):
        name = value
    elif isinstance(getattr(value, "name", None), str):  # tf.DType, np.dtype
        name = value.name
    else:
        try:
            name = np.dtype(value).name  # numpy scalar types, jnp.bfloat16 (ml_dtypes)
        except TypeError:
            name = str(value)  # torch.bfloat16 -> "torch.bfloat16"
    name = name.removeprefix("torch.")
    if name == "auto" or name in DTYPES:
        return "auto" if name == "auto" else DTYPES[name]
    raise ValueError(f"{argument}={given!r} is not a dtype encdec can load a model in: expected "
                     f"'auto' or a floating dtype ({', '.join(sorted(set(DTYPES.values())))}), "
                     "as a string or a framework dtype")


def take_dtype(kwargs: dict[str, Any], prefix: str = "") -> Any:
    """Pop `{prefix}dtype` and the reference's older `{prefix}torch_dtype` from `kwargs`; the
    value asked for (`dtype` wins when both are given, as the reference), or None."""
    dtype = kwargs.pop(f"{prefix}dtype", None)
    torch_dtype = kwargs.pop(f"{prefix}torch_dtype", None)
    if torch_dtype is not None and dtype is None:
        logger.info("%storch_dtype= is the reference's older name of %sdtype=", prefix, prefix)
        return dtype_name(torch_dtype, f"{prefix}torch_dtype")
    return None if dtype is None else dtype_name(dtype, f"{prefix}dtype")


def config_dtype(config: ModelConfig | EncoderDecoderConfig) -> str | None:
    """The dtype a config records (`dtype`, or the older `torch_dtype` key), or None."""
    value = config.extra.get("dtype", config.extra.get("torch_dtype"))
    return None if value is None else dtype_name(value, "config dtype")


def set_config_dtype(config: ModelConfig | EncoderDecoderConfig, name: str) -> None:
    """Record `name` as the config's dtype (and its sides'), as the reference does on load."""
    for c in (config, *(getattr(config, s) for s in ("encoder", "decoder")
                        if isinstance(config, EncoderDecoderConfig))):
        c.extra.pop("torch_dtype", None)
        c.extra["dtype"] = name


def checkpoint_dtype(directory: Path) -> str:
    """The dtype of the first floating tensor of a checkpoint (float32 when it has none)."""
    try:
        with open_state_dict(directory) as state:
            for key in state:
                stored = state.stored_dtype(key)
                if stored in DTYPES.values():
                    return stored
    except CheckpointError:  # no weights: the load reports that by name
        pass
    return "float32"


def resolve_dtype(requested: str | None, config: ModelConfig | EncoderDecoderConfig,
                  directory: Path) -> str:
    """The reference's `dtype="auto"` (its default): the config's dtype, else the dtype of the
    checkpoint's first floating tensor; an explicit dtype wins. Recorded in `config`."""
    name = requested if requested not in (None, "auto") else (
        config_dtype(config) or checkpoint_dtype(directory))
    set_config_dtype(config, name)
    return name


def warm_start_dtype(config: EncoderDecoderConfig, requested: str | None) -> str:
    """The one dtype of a warm-started composite: `dtype=` when given (beyond the reference,
    whose top-level `dtype=` only reaches the config), else the sides' dtypes, which must
    agree (each side's `encoder_dtype=` / `decoder_dtype=` or its checkpoint's)."""
    if requested not in (None, "auto"):
        name = requested
    else:
        sides = {s: config_dtype(getattr(config, s)) or "float32" for s in ("encoder", "decoder")}
        if sides["encoder"] != sides["decoder"]:
            raise ValueError(f"the encoder loads in {sides['encoder']} and the decoder in "
                             f"{sides['decoder']}: an encdec model holds one dtype; pass "
                             "dtype= (e.g. dtype='bfloat16')")
        name = sides["encoder"]
    set_config_dtype(config, name)
    return name


# --- keyword arguments: config fields and loader options; anything else is a TypeError --------

# loader arguments of the reference that have no meaning here: refused with the reason
_LOADER_ONLY = {
    "from_pt": "every backend reads every checkpoint directly",
    "from_tf": "convert the reference's tf_model.h5 once with encdec-convert",
    "from_flax": "convert the reference's flax_model.msgpack once with encdec-convert",
}
# the reference's `PretrainedConfig` switches that encdec reads from any config (`extra`)
CONFIG_SWITCHES = ("output_attentions", "output_hidden_states", "return_dict")
# other keys encdec reads from a config's `extra`: the composite's eos id (the generation
# config's default, `GenerationConfig.from_model_config`)
READ_FROM_EXTRA: dict[type, tuple[str, ...]] = {EncoderDecoderConfig: ("eos_token_id",)}
DTYPE_OPTIONS = ("dtype", "torch_dtype")  # `take_dtype`
# the loader options every backend takes besides config fields (Flax adds `rngs`, the keys of
# the random init of what a checkpoint lacks)
LOAD_OPTIONS = ("config", "output_loading_info", *DTYPE_OPTIONS)  # from_pretrained
WARM_START_OPTIONS = ("encoder_model", "decoder_model", "output_loading_info", *DTYPE_OPTIONS,
                      *(f"{side}_{o}" for side in ("encoder", "decoder") for o in DTYPE_OPTIONS))


def config_keys(cls: type) -> frozenset[str]:
    """The keyword arguments a config class takes from a loader: its fields, its settable
    properties (`EncoderDecoderConfig.tie_encoder_decoder`), `CONFIG_SWITCHES` and the keys
    encdec reads from its `extra` (`READ_FROM_EXTRA`)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    settable = {name for k in cls.__mro__ for name, v in vars(k).items()
                if isinstance(v, property) and v.fset is not None}
    read = {key for k in cls.__mro__ for key in READ_FROM_EXTRA.get(k, ())}
    return frozenset(fields | settable | read | set(CONFIG_SWITCHES))


def side_config_keys(expect: type = ModelConfig) -> frozenset[str]:
    """The config keys of any registered config class that is an `expect` (known before the
    checkpoint's own config.json says which class it is)."""
    return frozenset().union(*(config_keys(c) for c in config_classes().values()
                               if issubclass(c, expect)))


def unexpected_kwarg(caller: str, key: str, allowed: Collection[str]) -> TypeError:
    """The reference's TypeError for a keyword argument nobody takes, with the closest name."""
    name = key.removeprefix("encoder_").removeprefix("decoder_")
    if name in _LOADER_ONLY:
        return TypeError(f"{key}= is not an encdec argument: {_LOADER_ONLY[name]}")
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else \
        " (neither a config field nor a loader option)"
    return TypeError(f"{caller}() got an unexpected keyword argument {key!r}{hint}")


def check_kwargs(caller: str, kwargs: Iterable[str], allowed: Collection[str]) -> None:
    """Raise `unexpected_kwarg` for the first key of `kwargs` not in `allowed` (run before any
    file is read, so a typo costs nothing and never reaches a config's `extra`)."""
    for key in kwargs:
        if key not in allowed:
            raise unexpected_kwarg(caller, key, allowed)


def read_pretrained(path_or_id: str | os.PathLike, config: EncoderDecoderConfig | None = None,
                    *, caller: str = "EncoderDecoderModel.from_pretrained",
                    **config_overrides: Any) -> Pretrained:
    """Resolve a composite checkpoint and read its config, generation config and dtype
    (`dtype=` / `torch_dtype=` among the overrides, default "auto", see `resolve_dtype`).
    `config_overrides` are EncoderDecoderConfig fields (applied to `config` when one is given);
    any other key is a TypeError naming it, raised before anything is read."""
    allowed = config_keys(EncoderDecoderConfig) | set(DTYPE_OPTIONS)
    for key in config_overrides:
        if key not in allowed and key in side_config_keys():
            raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}: a field of "
                            "the encoder's or decoder's config, not of the composite's; set it "
                            f"on model.config.encoder / model.config.decoder after loading")
    check_kwargs(caller, config_overrides, allowed)
    requested = take_dtype(config_overrides)
    directory = resolve_checkpoint(path_or_id)
    if config is None:
        config = config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                                  expect=EncoderDecoderConfig, **config_overrides)
    else:
        config = copy.deepcopy(config)
        config.update(**config_overrides)
    gen_path = directory / GENERATION_CONFIG_NAME
    generation = (GenerationConfig.from_pretrained(directory) if gen_path.exists()
                  else GenerationConfig.from_model_config(config))
    return Pretrained(directory, config, generation, resolve_dtype(requested, config, directory))


def load_weights(table: Table, directory: Path, dialect: Dialect, assign: Assign, *,
                 strict: bool = True) -> LoadReport:
    """Load every parameter of `table` from the checkpoint in `directory`, one tensor at a time."""
    with open_state_dict(directory) as state:
        return load_state(table, state, dialect, assign, strict=strict, source=directory)


def read_backbone_config(path_or_id: str | os.PathLike, expect: type[ModelConfig] = ModelConfig,
                         *, config: ModelConfig | None = None, caller: str = "from_pretrained",
                         **overrides: Any) -> tuple[Path, ModelConfig]:
    """A single-model checkpoint's directory and config (`config` when given, else its
    config.json; `overrides` applied, the dtype to load in recorded in it: `config_dtype`); an
    error naming the file when its model_type is not an `expect`. An override that is no field
    of any `expect` class is a TypeError raised before anything is read; one that is no field
    of the checkpoint's own config class, a TypeError before any weight is read."""
    check_kwargs(caller, overrides, side_config_keys(expect) | set(DTYPE_OPTIONS))
    requested = take_dtype(overrides)
    directory = resolve_checkpoint(path_or_id)
    if config is None:
        d = read_config_dict(directory)
        cls = config_classes().get(str(d.get("model_type"))) if isinstance(d, dict) else None
        if cls is not None and issubclass(cls, expect):
            check_kwargs(caller, overrides, config_keys(cls))
        config = config_from_dict(d, source=directory / CONFIG_NAME, expect=expect, **overrides)
    else:
        check_kwargs(caller, overrides, config_keys(type(config)))
        config = copy.deepcopy(config)
        config.update(**overrides)
    if expect.model_type and config.model_type != expect.model_type:
        # a config subclass (RoBERTa's of BERT's) is another model: name the classes to use
        arch = architecture(config)
        classes = " or ".join(c for c in (arch.base_class, arch.lm_class) if c)
        raise ConfigError(f"{directory / CONFIG_NAME}: model_type {config.model_type!r} is not a "
                          f"{expect.__name__} ({expect.model_type!r}); load it with {classes}")
    resolve_dtype(requested, config, directory)
    return directory, config


def load_backbone(backend: Backend, cls: Any, build: Callable[[ModelConfig, str | None], Any],
                  path_or_id: str | os.PathLike, **overrides: Any) -> tuple[Any, LoadReport]:
    """A backbone's `from_pretrained` in every backend: its config (`overrides` checked: a
    TypeError before anything is read), `build(config, dtype)` without init, the checkpoint's
    weights (non-strict: heads or cross-attention it lacks get the reference's init, and are
    reported), then `finish` as for the composite."""
    directory, config = read_backbone_config(path_or_id, expect=cls.config_class, **overrides)
    model = build(config, config_dtype(config))
    table = model.table()
    report = load_backbone_weights(table, directory, backend.dialect,
                                   lambda path, a: backend.assign(model, path, a), cls.__name__)
    backend.init(model, table, config, report.missing)
    return finish(backend, model), report


def load_backbone_weights(table: Table, directory: Path, dialect: Dialect, assign: Assign,
                          what: str) -> LoadReport:
    """A backbone's `from_pretrained` load: non-strict, the newly initialised weights logged."""
    report = load_weights(table, directory, dialect, assign, strict=False)
    text = report.summary(f"{what} ({directory})")
    if text:
        logger.warning("%s", text)
    return report


def save_backbone(directory: str | os.PathLike, architecture: str, config: ModelConfig,
                  table: Table, dialect: Dialect, get: Get, *,
                  max_shard_size: int | str = "5GB", dtype: str = "float32") -> Path:
    """A backbone's `save_pretrained`: the reference's layout and names, written atomically;
    `dtype` (the weights' dtype) is written to config.json, as the reference does."""
    config_dict = {"architectures": [architecture], **config.to_dict(), "dtype": dtype}
    config_dict.pop("torch_dtype", None)
    return write_checkpoint(directory, export_state(table, get, dialect), config=config_dict,
                            max_shard_size=max_shard_size)


def save_pretrained(directory: str | os.PathLike, config: EncoderDecoderConfig,
                    generation_config: GenerationConfig | None, dialect: Dialect, get: Get, *,
                    max_shard_size: int | str = "5GB", dtype: str = "float32",
                    tokenizers: Tokenizers | None = None) -> Path:
    """Write the composite checkpoint atomically in the reference's layout and names, with the
    model's tokenizer files (`Tokenizers.files`); `dtype` (the weights' dtype) is written to
    config.json and its sides, as the reference does."""
    table = encoder_decoder_table(config)
    config_dict = {"architectures": ["EncoderDecoderModel"], **config.to_dict(), "dtype": dtype}
    for d in (config_dict, config_dict["encoder"], config_dict["decoder"]):
        d.pop("torch_dtype", None)
        d["dtype"] = dtype
    return write_checkpoint(directory, export_state(table, get, dialect), config=config_dict,
                            generation_config=generation_config.to_dict()
                            if generation_config is not None else None,
                            max_shard_size=max_shard_size,
                            files=tokenizers.files() if tokenizers is not None else None)
