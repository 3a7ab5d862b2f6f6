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
    """A resolved composite checkpoint: where it is and its configs."""

    directory: Path
    config: EncoderDecoderConfig
    generation_config: GenerationConfig


# loader arguments of the reference that have no meaning here: refused, never stored in config
_LOADER_ONLY = {
    "from_pt": "every backend reads every checkpoint directly",
    "from_tf": "convert the reference's tf_model.h5 once with encdec-convert",
    "from_flax": "convert the reference's flax_model.msgpack once with encdec-convert",
    "dtype": "load in float32, then cast the model (see docs/migrate.md)",
    "torch_dtype": "load in float32, then cast the model (see docs/migrate.md)",
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
    """Resolve a composite checkpoint and read its config and generation config."""
    refuse_loader_kwargs(config_overrides)
    directory = resolve_checkpoint(path_or_id)
    if config is None:
        config = config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                                  expect=EncoderDecoderConfig, **config_overrides)
    gen_path = directory / GENERATION_CONFIG_NAME
    generation = (GenerationConfig.from_pretrained(directory) if gen_path.exists()
                  else GenerationConfig.from_model_config(config))
    return Pretrained(directory, config, generation)


def load_weights(table: Table, directory: Path, dialect: Dialect, assign: Assign, *,
                 strict: bool = True) -> LoadReport:
    """Load every parameter of `table` from the checkpoint in `directory`, one tensor at a time."""
    with open_state_dict(directory) as state:
        return load_state(table, state, dialect, assign, strict=strict, source=directory)


def read_backbone_config(path_or_id: str | os.PathLike, expect: type[ModelConfig] = ModelConfig,
                         **overrides: Any) -> tuple[Path, ModelConfig]:
    """A single-model checkpoint's directory and config (`overrides` applied); an error naming
    the file when its model_type is not an `expect`."""
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
                  max_shard_size: int | str = "5GB") -> Path:
    """A backbone's `save_pretrained`: the reference's layout and names, written atomically."""
    config_dict = {"architectures": [architecture], **config.to_dict()}
    return write_checkpoint(directory, export_state(table, get, dialect), config=config_dict,
                            max_shard_size=max_shard_size)


def prepare_warm_start(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike,
                       **kwargs: Any) -> tuple[EncoderDecoderConfig, Path, Path]:
    """Configs for `from_encoder_decoder_pretrained`: `encoder_*` / `decoder_*` kwargs go to that
    side's config, the rest to the composite; the decoder becomes a cross-attending decoder."""
    refuse_loader_kwargs(kwargs)
    enc_kwargs, dec_kwargs, rest = split_kwargs(kwargs)
    enc_dir, enc_config = read_backbone_config(encoder_path, **enc_kwargs)
    if enc_config.is_decoder or enc_config.add_cross_attention:
        logger.info("encoder config had is_decoder/add_cross_attention set: turning them off")
        enc_config.is_decoder = enc_config.add_cross_attention = False
    dec_kwargs = {"is_decoder": True, "add_cross_attention": True, **dec_kwargs}
    dec_dir, dec_config = read_backbone_config(decoder_path, **dec_kwargs)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc_config, dec_config, **rest)
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
                    max_shard_size: int | str = "5GB") -> Path:
    """Write the composite checkpoint atomically in the reference's layout and names."""
    table = encoder_decoder_table(config)
    config_dict = {"architectures": ["EncoderDecoderModel"], **config.to_dict()}
    return write_checkpoint(directory, export_state(table, get, dialect), config=config_dict,
                            generation_config=generation_config.to_dict()
                            if generation_config is not None else None,
                            max_shard_size=max_shard_size)
