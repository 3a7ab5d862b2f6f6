"""Backend-independent steps of `from_pretrained`, `from_encoder_decoder_pretrained` and
`save_pretrained` (the reference's `EncoderDecoderModel` class methods).

A backend supplies only a `Dialect` and two callables: `assign(path, array)` writes a
parameter given its dialect path and layout, `get(path)` reads one back as numpy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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
from .registry import architecture
from .seq2seq import split_kwargs
from .weights import (
    Dialect,
    LoadReport,
    Table,
    decoder_table,
    encoder_decoder_table,
    encoder_table,
    export_state,
    load_state,
)

logger = logging.getLogger("encdec")

Assign = Callable[[str, np.ndarray], None]
Get = Callable[[str], np.ndarray]


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


# loader arguments of the reference that have no meaning here: refused, never stored in config
_LOADER_ONLY = {
    "from_pt": "every backend reads every checkpoint directly",
    "from_tf": "convert the reference's tf_model.h5 once with encdec-convert",
    "from_flax": "convert the reference's flax_model.msgpack once with encdec-convert",
}


def refuse_loader_kwargs(kwargs: dict[str, Any]) -> None:
    """A TypeError naming the reference's loader-only arguments (they would otherwise land in
    the config as unknown keys and do nothing)."""
    for key in kwargs:
        name = key.removeprefix("encoder_").removeprefix("decoder_")
        if name in _LOADER_ONLY:
            raise TypeError(f"{key}= is not an encdec argument: {_LOADER_ONLY[name]}")


def read_pretrained(path_or_id: str | os.PathLike, config: EncoderDecoderConfig | None = None,
                    **config_overrides: Any) -> Pretrained:
    """Resolve a composite checkpoint and read its config, generation config and dtype
    (`dtype=` / `torch_dtype=` among the overrides, default "auto", see `resolve_dtype`)."""
    requested = take_dtype(config_overrides)
    refuse_loader_kwargs(config_overrides)
    directory = resolve_checkpoint(path_or_id)
    if config is None:
        config = config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                                  expect=EncoderDecoderConfig, **config_overrides)
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
                         **overrides: Any) -> tuple[Path, ModelConfig]:
    """A single-model checkpoint's directory and config (`overrides` applied, the dtype to load
    in recorded in it: `config_dtype`); an error naming the file when its model_type is not an
    `expect`."""
    requested = take_dtype(overrides)
    refuse_loader_kwargs(overrides)
    directory = resolve_checkpoint(path_or_id)
    config = config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                              expect=expect, **overrides)
    if expect.model_type and config.model_type != expect.model_type:
        # a config subclass (RoBERTa's of BERT's) is another model: name the classes to use
        arch = architecture(config)
        classes = " or ".join(c for c in (arch.base_class, arch.lm_class) if c)
        raise ConfigError(f"{directory / CONFIG_NAME}: model_type {config.model_type!r} is not a "
                          f"{expect.__name__} ({expect.model_type!r}); load it with {classes}")
    resolve_dtype(requested, config, directory)
    return directory, config


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


def prepare_warm_start(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike,
                       **kwargs: Any) -> tuple[EncoderDecoderConfig, Path, Path]:
    """Configs for `from_encoder_decoder_pretrained`: `encoder_*` / `decoder_*` kwargs go to that
    side's config, the rest to the composite; the decoder becomes a cross-attending decoder."""
    requested = take_dtype(kwargs)
    refuse_loader_kwargs(kwargs)
    enc_kwargs, dec_kwargs, rest = split_kwargs(kwargs)
    enc_dir, enc_config = read_backbone_config(encoder_path, **enc_kwargs)
    if enc_config.is_decoder or enc_config.add_cross_attention:
        logger.info("encoder config had is_decoder/add_cross_attention set: turning them off")
        enc_config.is_decoder = enc_config.add_cross_attention = False
    dec_kwargs = {"is_decoder": True, "add_cross_attention": True, **dec_kwargs}
    dec_dir, dec_config = read_backbone_config(decoder_path, **dec_kwargs)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc_config, dec_config, **rest)
    warm_start_dtype(config, requested)  # recorded in config (`config_dtype`)
    return config, enc_dir, dec_dir


def warm_start_weights(config: EncoderDecoderConfig, encoder_dir: Path, decoder_dir: Path,
                       dialect: Dialect, assign: Assign) -> dict[str, LoadReport]:
    """Load the two backbones into a composite; log what was newly initialised or dropped."""
    reports = {}
    sides = [("encoder", encoder_table(config.encoder), encoder_dir),
             ("decoder", decoder_table(config.decoder), decoder_dir)]
    if config.tie_encoder_decoder:  # shared storage: the encoder's values win, as the reference
        sides.reverse()
    for side, table, directory in sides:
        def assign_side(path: str, a: np.ndarray, side: str = side) -> None:
            assign(f"{side}.{path}", a)

        reports[side] = load_weights(table, directory, dialect, assign_side, strict=False)
        text = reports[side].summary(f"the {side} ({directory})")
        if text:
            logger.warning("%s\nYou should probably fine-tune this model before using it.", text)
    return {"encoder": reports["encoder"], "decoder": reports["decoder"]}


def save_pretrained(directory: str | os.PathLike, config: EncoderDecoderConfig,
                    generation_config: GenerationConfig | None, dialect: Dialect, get: Get, *,
                    max_shard_size: int | str = "5GB", dtype: str = "float32") -> Path:
    """Write the composite checkpoint atomically in the reference's layout and names; `dtype`
    (the weights' dtype) is written to config.json and its sides, as the reference does."""
    table = encoder_decoder_table(config)
    config_dict = {"architectures": ["EncoderDecoderModel"], **config.to_dict(), "dtype": dtype}
    for d in (config_dict, config_dict["encoder"], config_dict["decoder"]):
        d.pop("torch_dtype", None)
        d["dtype"] = dtype
    return write_checkpoint(directory, export_state(table, get, dialect), config=config_dict,
                            generation_config=generation_config.to_dict()
                            if generation_config is not None else None,
                            max_shard_size=max_shard_size)
