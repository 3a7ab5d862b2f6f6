"""The conversion itself: read a composite checkpoint in any of the reference's three formats into
canonical tensors, write it in another, optionally as the reference's split workaround, verify it
numerically, and move it into place atomically.

Canonical names and layouts are the core table's (`encdec.core.weights`); the reference's TF and
Flax names come from `reference.py`. Every stored tensor must match a table entry and every
owned table entry must be stored: anything else is an error naming the key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from encdec.core.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    open_state_dict,
    read_config_dict,
    write_checkpoint,
)
from encdec.core.config import ConfigError, EncoderDecoderConfig, GenerationConfig, config_from_dict
from encdec.core.registry import architecture, decoder_table, encoder_decoder_table, encoder_table
from encdec.core.weights import Table, match_keys

from . import backends
from .files import (
    FLAX_WEIGHTS_NAME,
    TF_WEIGHTS_NAME,
    H5Reader,
    read_msgpack,
    write_h5,
    write_msgpack,
)
from .reference import DIALECTS, canonical_names, from_file, reference_names, stored_shape, to_file

FORMATS = ("pt", "tf", "flax")
DTYPES = ("float32", "bfloat16", "float16")
WEIGHT_FILES = {
    "pt": (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME),
    "tf": (TF_WEIGHTS_NAME,),
    "flax": (FLAX_WEIGHTS_NAME,),
}
SPLIT_PROJ_NAME = "enc_to_dec_proj.safetensors"
_NOT_COPIED = {CONFIG_NAME, GENERATION_CONFIG_NAME}


class ConvertError(Exception):
    """A conversion failure; `code` is the CLI's exit code (see cli.py)."""

    code = 1


class UsageError(ConvertError):
    code = 2


class InputError(ConvertError):
    code = 3


class OutputError(ConvertError):
    code = 4


class VerificationError(ConvertError):
    code = 1


class DependencyError(ConvertError):
    code = 5


# ----------------------------------------------------------------------------- reading


def detect_format(directory: Path) -> str:
    """The format of the weights in `directory` (pt wins when several are present)."""
    for fmt in FORMATS:
        if any((directory / name).is_file() for name in WEIGHT_FILES[fmt]):
            return fmt
    sharded = sorted(p.name for p in directory.glob("*.index.json"))
    raise InputError(f"{directory} holds no weights this converter reads: expected one of "
                     f"{[n for names in WEIGHT_FILES.values() for n in names]}"
                     + (f" (found {sharded}: sharded TF/Flax files are not supported)"
                        if sharded else ""))


@dataclass
class Source:
    """A composite checkpoint as canonical tensors (`names` in table order, `get(name)`)."""

    directory: Path
    format: str
    config: EncoderDecoderConfig
    generation: GenerationConfig
    table: Table
    getters: dict[str, Callable[[], np.ndarray]]
    close: Callable[[], None] = field(default=lambda: None)

    @property
    def names(self) -> list[str]:
        """What a checkpoint stores: owned parameters and stored tied copies
        (`tie_encoder_decoder`'s decoder weights, which the reference writes out in full)."""
        return [p.name for p in self.table.saved]

    def get(self, name: str) -> np.ndarray:
        """Canonical tensor of a stored parameter, shape-checked against the table (a tied copy
        the source does not hold is its owner's tensor)."""
        owner = name if name in self.getters else _owner(self.table, name)
        try:
            array = self.getters[owner]()
        except CheckpointError as e:
            raise InputError(str(e)) from None
        want = self.table.by_name[name].shape
        if tuple(array.shape) != want:
            raise InputError(f"{self.directory}: {name!r} has shape {tuple(array.shape)}, the "
                             f"config says {want}")
        return array

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.names:
            yield name, self.get(name)

    def config_dict(self, dtype: str) -> dict[str, Any]:
        d = {**self.config.to_dict(), "architectures": ["EncoderDecoderModel"], "dtype": dtype}
        if "torch_dtype" in d:
            d["torch_dtype"] = dtype
        return d


def read_configs(directory: Path) -> tuple[EncoderDecoderConfig, GenerationConfig]:
    """The composite config (errors name the file and field) and its generation config."""
    try:
        config = config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                                  expect=EncoderDecoderConfig)
        gen = (GenerationConfig.from_pretrained(directory)
               if (directory / GENERATION_CONFIG_NAME).is_file()
               else GenerationConfig.from_model_config(config))
    except (CheckpointError, ConfigError) as e:
        raise InputError(str(e)) from None
    return config, gen


def open_source(src: str | os.PathLike, fmt: str | None = None) -> Source:
    """Open `src` (a directory in the pt, tf or flax layout) as canonical tensors."""
    directory = Path(src)
    if not directory.is_dir():
        raise InputError(f"source {directory} is not a directory")
    fmt = fmt or detect_format(directory)
    config, gen = read_configs(directory)
    try:
        table = encoder_decoder_table(config)
        if fmt == "pt":
            return _open_pt(directory, config, gen, table)
        return _open_reference(directory, fmt, config, gen, table)
    except CheckpointError as e:
        raise InputError(str(e)) from None


def _open_pt(directory: Path, config, gen, table: Table) -> Source:
    reader = open_state_dict(directory)
    m = match_keys(table, reader.keys())
    problems = []
    if m.unexpected:
        problems.append(f"keys that match no parameter of the model: {sorted(m.unexpected)}")
    if m.missing:
        problems.append(f"missing weights: {m.missing}")
    if problems:
        reader.close()
        raise InputError(f"{directory}: " + "; ".join(problems))
    getters: dict[str, Callable[[], np.ndarray]] = {
        name: partial(reader.__getitem__, key) for name, key in m.keys.items()}
    keys = set(reader.keys())
    for p in table.saved:  # stored tied copies are carried as stored (match_keys skips them)
        if p.tied_to is not None and p.name in keys:
            getters[p.name] = partial(reader.__getitem__, p.name)
    return Source(directory, "pt", config, gen, table, getters, reader.close)


def _open_reference(directory: Path, fmt: str, config, gen, table: Table) -> Source:
    dialect = DIALECTS[fmt]
    path = directory / WEIGHT_FILES[fmt][0]
    keys: Iterable[str]
    get: Callable[[str], np.ndarray]
    close: Callable[[], None]
    where: Callable[[str], str]
    if fmt == "tf":
        reader = H5Reader(path)
        keys, get, close, where = reader.keys(), reader.get, reader.close, reader.dataset
    else:
        arrays = read_msgpack(path)
        keys, get, close, where = list(arrays), arrays.__getitem__, (lambda: None), str
    reverse = canonical_names(config, dialect)
    unmatched = [where(k) for k in keys if k not in reverse]
    forward = reference_names(config, dialect)
    missing = [f"{forward[n][0]} ({n})" for n in forward if forward[n][0] not in set(keys)]
    problems = []
    if unmatched:
        problems.append(f"keys that match no parameter of the model: {unmatched}")
    if missing:
        problems.append(f"missing weights: {missing}")
    if problems:
        close()
        raise InputError(f"{path}: " + "; ".join(problems))

    def getter(key: str, name: str, layout) -> Callable[[], np.ndarray]:
        def get_one() -> np.ndarray:
            array = get(key)
            want = stored_shape(table.by_name[name].shape, layout)
            if tuple(array.shape) != want:
                raise InputError(f"{path}: {where(key)!r} has shape {tuple(array.shape)}, "
                                 f"expected {want} for {name!r}")
            return from_file(array, layout)
        return get_one

    getters = {forward_name: getter(k, forward_name, layout)
               for k, (forward_name, layout) in reverse.items()}
    return Source(directory, fmt, config, gen, table, getters, close)


# ----------------------------------------------------------------------------- writing


def cast(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` in `dtype` (floating tensors only)."""
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        return array
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(np.float32).astype(ml_dtypes.bfloat16)
    return array.astype(dtype)


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    def wrap(it):
        return iter(tqdm(it, total=total, desc=desc, unit="tensor", leave=False,
                         disable=True if quiet else None))
    return wrap


def _write_configs(out: Path, source: Source, dtype: str) -> None:
    (out / CONFIG_NAME).write_text(json.dumps(source.config_dict(dtype), indent=2,
                                              sort_keys=True) + "\n")
    (out / GENERATION_CONFIG_NAME).write_text(json.dumps(source.generation.to_dict(), indent=2,
                                                         sort_keys=True) + "\n")


def write_target(out: Path, source: Source, fmt: str, *, dtype: str = "float32",
                 shard_size: str | int = "5GB", quiet: bool = False) -> None:
    """Write `source` to the new directory `out` in `fmt`'s native layout."""
    progress = _progress(len(source.names), f"writing {fmt}", quiet)
    if fmt == "pt":
        write_checkpoint(out, ((n, cast(a, dtype)) for n, a in progress(source.items())),
                         config=source.config_dict(dtype),
                         generation_config=source.generation.to_dict(),
                         max_shard_size=shard_size)
        return
    names = reference_names(source.config, DIALECTS[fmt])
    by_key = {key: (name, layout) for name, (key, layout) in names.items()}

    def get(key: str) -> np.ndarray:
        name, layout = by_key[key]
        return to_file(cast(source.get(name), dtype), layout)

    out.mkdir()
    keys = [names[n][0] for n in source.names]
    if fmt == "tf":
        write_h5(out / TF_WEIGHTS_NAME, keys, get, progress=progress)
    else:
        write_msgpack(out / FLAX_WEIGHTS_NAME, keys, get, progress=progress)
    _write_configs(out, source, dtype)


def _owner(table: Table, name: str) -> str:
    """Follow `tied_to` to the parameter that holds the storage."""
    while (owner := table.by_name[name].tied_to) is not None:
        name = owner
    return name


def write_split(out: Path, source: Source, *, dtype: str = "float32",
                shard_size: str | int = "5GB", quiet: bool = False) -> None:
    """The reference's workaround layout: `encoder/` and `decoder/` single-model PyTorch
    checkpoints for `from_encoder_decoder_pretrained(..., encoder_from_pt=True,
    decoder_from_pt=True)`, with the composite config beside them."""
    out.mkdir()
    config = source.config
    for side, table, cls in (
            ("encoder", encoder_table(config.encoder), architecture(config.encoder).base_class),
            ("decoder", decoder_table(config.decoder), architecture(config.decoder).lm_class)):
        sub = getattr(config, side)
        progress = _progress(len(table.owned), f"writing {side}", quiet)
        tensors = ((p.name, cast(source.get(_owner(source.table, f"{side}.{p.name}")), dtype))
                   for p in progress(table.owned))
        write_checkpoint(out / side, tensors,
                         config={**sub.to_dict(), "architectures": [cls],
                                 "dtype": dtype},
                         max_shard_size=shard_size)
    if "enc_to_dec_proj.weight" in source.table.by_name:
        from safetensors.numpy import save_file

        save_file({k: cast(source.get(f"enc_to_dec_proj.{k}"), dtype) for k in ("weight", "bias")},
                  str(out / SPLIT_PROJ_NAME))
    _write_configs(out, source, dtype)


def open_split(directory: Path) -> Source:
    """Read a `write_split` directory back as one composite (the converter's own check)."""
    config, gen = read_configs(directory)
    table = encoder_decoder_table(config)
    getters: dict[str, Callable[[], np.ndarray]] = {}
    readers = []
    for side, sub_table in (("encoder", encoder_table(config.encoder)),
                            ("decoder", decoder_table(config.decoder))):
        reader = open_state_dict(directory / side)
        readers.append(reader)
        m = match_keys(sub_table, reader.keys())
        if m.unexpected or m.missing:
            raise InputError(f"{directory / side}: unexpected {m.unexpected}, missing {m.missing}")
        for name, key in m.keys.items():
            getters[f"{side}.{name}"] = partial(reader.__getitem__, key)
    if "enc_to_dec_proj.weight" in table.by_name:
        from safetensors.numpy import load_file

        proj = load_file(str(directory / SPLIT_PROJ_NAME))
        for k in ("weight", "bias"):
            getters[f"enc_to_dec_proj.{k}"] = partial(proj.__getitem__, k)
    for p in table.owned:  # tie_encoder_decoder: the decoder's copy stands for the encoder's
        getters.setdefault(p.name, partial(_read_tied_copy, getters, table, p.name))

    def close() -> None:
        for r in readers:
            r.close()

    return Source(directory, "pt", config, gen, table, getters, close)


def _read_tied_copy(getters: dict[str, Callable[[], np.ndarray]], table: Table,
                    name: str) -> np.ndarray:
    return getters[_tied_copy(table, name)]()


def _tied_copy(table: Table, name: str) -> str:
    for p in table.params:
        if p.tied_to == name and p.name.startswith("decoder."):
            return p.name
    raise InputError(f"split checkpoint: no tensor for {name!r}")


# ----------------------------------------------------------------------------- verification


def verify(source: Source, result: Source, source_fw: str, result_fw: str, dtype: str,
           log: Callable[[str], None] = print) -> float:
    """Max |Δlogits| between `source` run in `source_fw` and `result` run in `result_fw`;
    raises VerificationError above the dtype's bound."""
    batch = backends.random_batch(source.config)
    logits = {}
    for label, state, fw in (("source", source, source_fw), ("result", result, result_fw)):
        try:
            backends.module(fw)
        except backends.BackendUnavailable as e:
            raise DependencyError(f"cannot verify: {e}. Install it, or pass --no-verify") from None
        with backends.staged(state.items(), state.config_dict("float32"),
                             state.generation) as ckpt:
            try:
                model = backends.load(fw, ckpt)
                logits[label] = backends.forward(fw, model, batch)["logits"]
            except Exception as e:  # a backend that cannot run the checkpoint fails the check
                raise VerificationError(f"encdec.{fw} could not run the {label} checkpoint: "
                                        f"{type(e).__name__}: {e}") from e
            del model
    diff = float(np.abs(logits["source"].astype(np.float64) - logits["result"]).max())
    limit = backends.bound(dtype, logits["source"])
    verdict = "OK" if diff <= limit else "FAILED"
    log(f"verify: max |Δlogits| = {diff:.3e} ({source.format} in encdec.{source_fw} vs "
        f"{result.format} in encdec.{result_fw}, {dtype}, bound {limit:.1e}): {verdict}")
    if diff > limit:
        raise VerificationError(f"max |Δlogits| = {diff:.3e} exceeds the {dtype} bound "
                                f"{limit:.1e}; nothing was written")
    return diff


# ----------------------------------------------------------------------------- the whole job


@dataclass
class Result:
    destination: Path
    max_abs_diff: float | None


def _copy_extras(src: Path, out: Path) -> None:
    """Tokenizer files, README, …: everything in SRC that is not weights or configs."""
    weights = {n for names in WEIGHT_FILES.values() for n in names}
    for entry in src.iterdir():
        if (entry.is_file() and entry.name not in weights | _NOT_COPIED
                and not entry.name.startswith((".", "model-", "pytorch_model-"))
                and not entry.name.endswith((".safetensors", ".bin", ".h5", ".msgpack"))):
            shutil.copy2(entry, out / entry.name)


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *,
            source_format: str | None = None, split: bool = False, verify_result: bool = True,
            dtype: str = "float32", shard_size: str | int = "5GB", force: bool = False,
            quiet: bool = False, log: Callable[[str], None] = print) -> Result:
    """Convert the checkpoint in `src` to `to`'s format in `dst` (see `encdec-convert --help`).

    Everything is written and verified in a temporary sibling of `dst`, which is then renamed
    into place; on any failure nothing is left at `dst` (an existing `dst` is only replaced with
    `force`, and only after success).
    """
    if to not in FORMATS:
        raise UsageError(f"unknown target format {to!r}; choose from {FORMATS}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {DTYPES}")
    if dtype == "bfloat16" and to == "tf" and not split:
        raise UsageError("tf_model.h5 cannot hold bfloat16 (HDF5 has no bfloat16 type and the "
                         "reference's TF classes load float32/float16): use --dtype float16 "
                         "or float32")
    src, dst = Path(src), Path(dst)
    if dst.exists() and not force:
        raise OutputError(f"destination {dst} exists; pass --force to replace it")
    if dst.exists() and not dst.is_dir():
        raise OutputError(f"destination {dst} is a file, not a checkpoint directory")
    if src.exists() and dst.resolve() in (src.resolve(), *src.resolve().parents):
        raise OutputError(f"destination {dst} would overwrite the source {src}")
    try:
        return _convert(src, dst, to, source_format, split, verify_result, dtype, shard_size,
                        quiet, log)
    except ImportError as e:
        raise DependencyError(f"{e.name or e} is needed for this conversion and is not "
                              f"installed: pip install {e.name or ''}") from None


def _convert(src: Path, dst: Path, to: str, source_format: str | None, split: bool,
             verify_result: bool, dtype: str, shard_size: str | int, quiet: bool,
             log: Callable[[str], None]) -> Result:
    source = open_source(src, source_format)
    if to in DIALECTS and not split:  # the reference's classes may not hold this architecture
        try:
            reference_names(source.config, DIALECTS[to])
        except CheckpointError as e:
            source.close()
            raise InputError(str(e)) from None
    diff = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.convert-", dir=dst.parent))
        try:
            out = staging / "out"
            if split:
                write_split(out, source, dtype=dtype, shard_size=shard_size, quiet=quiet)
            else:
                write_target(out, source, to, dtype=dtype, shard_size=shard_size, quiet=quiet)
            _copy_extras(src, out)
            if verify_result:
                result = open_split(out) if split else open_source(out, to)
                try:
                    diff = verify(source, result, source.format, to, dtype, log)
                finally:
                    result.close()
            if dst.exists():
                os.replace(dst, staging / "old")
            os.replace(out, dst)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except CheckpointError as e:
        raise OutputError(str(e)) from None
    finally:
        source.close()
    return Result(dst, diff)


@contextlib.contextmanager
def canonical_checkpoint(path: str | os.PathLike, fmt: str | None = None) -> Iterator[Path]:
    """`path` itself when it is in our format, else a temporary float32 copy converted from the
    reference's TF / Flax files (so every backend can load it)."""
    directory = Path(path)
    fmt = fmt or detect_format(directory)
    if fmt == "pt":
        yield directory
        return
    source = open_source(directory, fmt)
    try:
        with backends.staged(source.items(), source.config_dict("float32"),
                             source.generation) as ckpt:
            yield ckpt
    finally:
        source.close()
