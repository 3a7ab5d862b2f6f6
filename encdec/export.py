"""Deployment export, format-independent part: dispatch to the backend that owns a format,
the artefact's manifest (`export.json`: format, versions, model types, the generation settings
fixed at export time, inputs, files and their sha256), atomic output (a temporary sibling
directory renamed into place, as `encdec.core.checkpoint.write_checkpoint`) and verification
of the written artefact in a fresh process against encdec's own `generate`.

Framework-free at import: a backend is imported only when a model of it is exported.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import encdec
from encdec.core.checkpoint import _recover, _SaveLock, _swap

MANIFEST = "export.json"
FORMATS: dict[str, str] = {"onnx": "pt", "saved_model": "tf", "jax": "flax"}  # format -> backend
DEFAULT_FORMAT: dict[str, str] = {b: f for f, b in FORMATS.items()}
GENERATION_FLAGS = ("num_beams", "max_new_tokens", "no_repeat_ngram_size", "repetition_penalty")


class ExportError(ValueError):
    """A bad export request, or an artefact that is corrupt, mismatched or failed verification."""


# --- manifest ---------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, format: str, config: Any,
                   settings: Mapping[str, Any], *, inputs: Mapping[str, str],
                   files: Iterable[str], extra: Mapping[str, Any] | None = None) -> Path:
    """Write `export.json` into `directory`: `config` is the model's EncoderDecoderConfig (or
    its dict), `settings` the generation config fields fixed at export, `files` the artefact's
    files (relative to `directory`), hashed here."""
    directory = Path(directory)
    cfg = config if isinstance(config, Mapping) else config.to_dict()
    manifest = {
        "format": format, "encdec_version": encdec.__version__,
        "model_types": {"encoder": cfg["encoder"]["model_type"],
                        "decoder": cfg["decoder"]["model_type"]},
        "config": cfg, "generation": dict(settings), "inputs": dict(inputs),
        "files": {f: sha256(directory / f) for f in files}, **dict(extra or {})}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(directory: str | os.PathLike, format: str | None = None) -> dict[str, Any]:
    """`export.json` of `directory`, every listed file present with its recorded sha256; a
    clear ExportError naming the file otherwise (or when it is not of `format`)."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ExportError(f"{path}: missing — {directory} is not an encdec export")
    try:
        manifest = json.loads(path.read_text())
        files, fmt = manifest["files"], manifest["format"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not a valid encdec export manifest ({e})") from None
    if format is not None and fmt != format:
        raise ExportError(f"{path}: an export of format {fmt!r}, expected {format!r}")
    for name, digest in files.items():
        f = directory / name
        if not f.is_file():
            raise ExportError(f"{f}: missing (listed in {path})")
        if sha256(f) != digest:
            raise ExportError(f"{f}: sha256 differs from the one recorded in {path}: the file "
                              "is corrupt or comes from another export")
    return manifest


# --- running an artefact in a fresh process ---------------------------------------------------


def run_script(directory: Path, input_ids: np.ndarray, attention_mask: np.ndarray,
               timeout: float = 600) -> np.ndarray:
    """Tokens from `directory/run.py --in inputs.npz --out tokens.npz` in a fresh process."""
    directory = Path(directory).resolve()
    with tempfile.TemporaryDirectory(prefix="encdec-run-") as tmp:
        src, dst = Path(tmp) / "inputs.npz", Path(tmp) / "tokens.npz"
        np.savez(src, input_ids=np.asarray(input_ids, np.int64),
                 attention_mask=np.asarray(attention_mask, np.int64))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        r = subprocess.run([sys.executable, str(directory / "run.py"), "--in", str(src),
                            "--out", str(dst)], capture_output=True, text=True, env=env,
                           timeout=timeout, cwd=tmp)
        if r.returncode != 0:
            raise ExportError(f"{directory / 'run.py'} failed (exit {r.returncode}):\n"
                              f"{r.stderr.strip()[-4000:]}")
        with np.load(dst) as out:
            return out["tokens"]


# --- export with verification -----------------------------------------------------------------


def backend_of(model: Any) -> str:
    """'pt', 'tf' or 'flax': the encdec backend package that defines the model's class."""
    parts = type(model).__module__.split(".")
    if len(parts) < 2 or parts[0] != "encdec" or parts[1] not in DEFAULT_FORMAT:
        raise ExportError(f"model: expected an encdec EncoderDecoderModel (pt, tf or flax), "
                          f"got {type(model).__module__}.{type(model).__name__}")
    return parts[1]


def verification_batches(config: Any, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded encoder batches of 1 and 3 drawn from the config's vocabulary (ids 4.., or all
    for a tiny vocabulary), padded with the encoder's padding id."""
    enc = config.encoder
    vocab = int(enc.vocab_size)
    pad = enc.pad_token_id if getattr(enc, "pad_token_id", None) is not None else 0
    rng = np.random.default_rng(seed)
    low = 4 if vocab > 8 else 0
    out = []
    for batch, length in ((1, 7), (3, 9)):
        ids = rng.integers(low, vocab, (batch, length)).astype(np.int64)
        mask = np.ones((batch, length), np.int64)
        if batch > 1:
            mask[1, -3:] = 0
            mask[-1, -1:] = 0
        ids[mask == 0] = pad
        out.append((ids, mask))
    return out


def _backend_module(backend: str):
    return importlib.import_module(f"encdec.{backend}.export")


def verify(model: Any, directory: Path, format: str, **generation_kwargs: Any) -> None:
    """Run the artefact in `directory` in a fresh process on `verification_batches` and compare
    its tokens with the model's own `generate`; ExportError on any difference."""
    mod = _backend_module(FORMATS[format])
    for ids, mask in verification_batches(model.config):
        want = np.asarray(model.generate(ids, attention_mask=mask, **generation_kwargs))
        got = np.asarray(mod.run_exported(directory, ids, mask))
        if want.shape != got.shape or not np.array_equal(want, got):
            raise ExportError(f"verification failed for the {format} export: on a batch of "
                              f"{len(ids)} the artefact gave tokens\n{got}\nbut generate gave\n"
                              f"{want}")


def export_model(model: Any, directory: str | os.PathLike, format: str | None = None, *,
                 verify_output: bool = True, example_inputs: Any = None,
                 **generation_kwargs: Any) -> Path:
    """Export `model` to `directory` in `format` (default: its backend's format) with the
    generation settings `generation_kwargs` fixed, verify it in a fresh process (unless
    `verify_output=False`), and move it into place atomically. On any failure `directory` is
    left as it was."""
    backend = backend_of(model)
    format = format or DEFAULT_FORMAT[backend]
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: expected one of {sorted(FORMATS)}")
    if FORMATS[format] != backend:
        raise ExportError(f"format={format!r} is exported from the {FORMATS[format]} backend; "
                          f"this model is encdec.{backend}'s (load the checkpoint with "
                          f"encdec.{FORMATS[format]}.EncoderDecoderModel)")
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ExportError(f"cannot export to {target}: it is a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    mod = _backend_module(backend)
    with _SaveLock(target):
        _recover(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        old: Path | None = None
        moved = False
        try:
            mod.export(model, tmp, example_inputs=example_inputs, **generation_kwargs)
            read_manifest(tmp, format)
            if verify_output:
                verify(model, tmp, format, **generation_kwargs)
            os.chmod(tmp, 0o755)
            if target.is_dir():
                old = _swap(tmp, target)
            else:
                os.replace(tmp, target)
            moved = True
        finally:
            if not moved:
                shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return target


def export_checkpoint(checkpoint: str | os.PathLike, directory: str | os.PathLike, format: str,
                      *, verify_output: bool = True, **generation_kwargs: Any) -> Path:
    """Load `checkpoint` in the backend that owns `format` and export it (`export_model`)."""
    if format not in FORMATS:
        raise ExportError(f"format={format!r}: expected one of {sorted(FORMATS)}")
    backend = importlib.import_module(f"encdec.{FORMATS[format]}")
    model = backend.EncoderDecoderModel.from_pretrained(checkpoint)
    return export_model(model, directory, format, verify_output=verify_output,
                        **generation_kwargs)


# --- the runners' common part ------------------------------------------------------------------

# What every format's `run.py` holds after its docstring's first line (numpy only, never
# encdec): the manifest and sha256 checks and the input checks; a backend's runner adds its
# loading and calling after it.
_RUNNER_PREAMBLE = r'''
    python run.py --in inputs.npz --out tokens.npz

inputs.npz holds `input_ids` and `attention_mask` (batch, length) integer arrays; tokens.npz
gets `tokens` (batch * num_return_sequences, length) int64. Importable too: `load(directory)`
returns a callable (input_ids, attention_mask) -> tokens.
"""

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent


class ExportError(ValueError):
    pass


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory):
    path = Path(directory) / "export.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing: {directory} is not an encdec export")
    try:
        manifest = json.loads(path.read_text())
        files, fmt, info = manifest["files"], manifest["format"], manifest["__FORMAT__"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: not a valid encdec export manifest ({e})") from None
    if fmt != "__FORMAT__":
        raise ExportError(f"{path}: an export of format {fmt!r}, expected '__FORMAT__'")
    for name, digest in files.items():
        f = Path(directory) / name
        if not f.is_file():
            raise ExportError(f"{f}: missing (listed in {path})")
        if _sha256(f) != digest:
            raise ExportError(f"{f}: sha256 differs from the one recorded in {path}: the file "
                              "is corrupt or comes from another export")
    return manifest, info


def _check(name, x, vocab, limit=None):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ExportError(f"{name}: expected a 2-D (batch, length) array, got shape {x.shape}")
    if x.dtype.kind not in "iub":
        raise ExportError(f"{name}: expected integers, got dtype {x.dtype}")
    if limit is not None and x.shape[1] > limit:
        raise ExportError(f"{name}: length {x.shape[1]} exceeds this export's source length "
                          f"limit {limit} (the encoder's position table)")
    if x.size and (x.min() < 0 or x.max() >= vocab):
        bad = x.min() if x.min() < 0 else x.max()
        raise ExportError(f"{name}: id {int(bad)} is outside [0, {vocab})")
    return x.astype(np.int32)


def check_inputs(info, input_ids, attention_mask=None):
    """(ids, mask) int32 after the checks this export needs (shape, dtype, ids, length)."""
    ids = _check("input_ids", input_ids, info["encoder_vocab_size"], info["max_source_length"])
    mask = np.ones_like(ids) if attention_mask is None else \
        _check("attention_mask", attention_mask, 2)
    if mask.shape != ids.shape:
        raise ExportError(f"attention_mask: shape {mask.shape} differs from input_ids' "
                          f"{ids.shape}")
    return ids, mask

'''


def runner_script(format: str, first_line: str, body: str) -> str:
    """A self-contained `run.py`: `first_line` (its docstring's), the common preamble (the
    manifest of `format`, sha256 of every file, input checks), then the backend's `body`."""
    return first_line + "\n" + _RUNNER_PREAMBLE.replace("__FORMAT__", format) + "\n" + body
