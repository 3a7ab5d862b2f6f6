"""Run encdec's three backends (and transformers, the reference) on one checkpoint: load,
forward (logits, loss) and greedy decoding, with numpy in and out.

Used by `encdec-convert --verify` and by `encdec parity` / `encdec demo`. Framework noise is
silenced before any framework is imported (`quiet()`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encdec.core.checkpoint import write_checkpoint
from encdec.core.config import EncoderDecoderConfig, GenerationConfig
from encdec.core.registry import max_positions
from encdec.core.seq2seq import IGNORE_INDEX

FRAMEWORKS = ("pt", "tf", "flax")
MODULES = {"pt": "encdec.pt", "tf": "encdec.tf", "flax": "encdec.flax"}
REFERENCE = "transformers"

# Bound on max |Δlogits| between the source and the converted checkpoint, per stored dtype.
# float32: DESIGN.md's cross-backend bound. bfloat16 / float16: the converted weights are the
# source's rounded to 8 / 11 significant bits (relative error 2**-9 / 2**-12 per weight), and
# that rounding, not the conversion, dominates: the bound is relative to the logits' scale,
# max(1, max |logits|) — 5e-2 for bfloat16 (≈ 25 × 2**-9) and 1e-2 for float16 (≈ 40 × 2**-12),
# with headroom for the errors of many layers adding up (measured: see docs/convert.md).
BOUNDS = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}
RELATIVE = {"float32": False, "bfloat16": True, "float16": True}


class BackendUnavailable(RuntimeError):
    """A framework (or its encdec backend) is not installed."""


def bound(dtype: str, reference_logits: np.ndarray) -> float:
    """The allowed max |Δlogits| for weights stored in `dtype`."""
    scale = max(1.0, float(np.abs(reference_logits).max())) if RELATIVE[dtype] else 1.0
    return BOUNDS[dtype] * scale


def quiet() -> None:
    """Silence TF / JAX / absl / transformers chatter; call before importing a framework."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="jax")
    for name in ("absl", "tensorflow", "jax", "jax._src.xla_bridge", "h5py", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)


@contextlib.contextmanager
def _silent_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: TF's C++ logging writes there at import."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def available(framework: str) -> bool:
    """Whether `framework`'s backend (or transformers) can be imported."""
    try:
        module(framework)
    except BackendUnavailable:
        return False
    return True


def module(framework: str):
    """The model module of `framework`: encdec.pt / encdec.tf / encdec.flax, or transformers."""
    quiet()
    name = MODULES.get(framework, REFERENCE)
    try:
        with _silent_stderr():
            mod = importlib.import_module(name)
            if framework == REFERENCE:
                importlib.import_module("torch")
                mod.logging.set_verbosity_error()
                mod.logging.disable_progress_bar()
    except ImportError as e:
        raise BackendUnavailable(f"{name} cannot be imported ({e}); install it with "
                                 f"pip install 'encdec[{_EXTRA.get(framework, 'test')}]'") from None
    if not hasattr(mod, "EncoderDecoderModel"):
        raise BackendUnavailable(f"{name} has no EncoderDecoderModel yet")
    return mod


_EXTRA = {"pt": "torch", "tf": "tf", "flax": "flax"}


def load(framework: str, directory: str | os.PathLike):
    """`EncoderDecoderModel.from_pretrained(directory)` of `framework`, in inference mode."""
    model = module(framework).EncoderDecoderModel.from_pretrained(str(directory))
    if framework in ("pt", REFERENCE):
        model.eval()
    return model


def _tensor(framework: str, array: np.ndarray):
    if framework in ("pt", REFERENCE):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array, np.int64))
    if framework == "tf":
        import tensorflow as tf

        return tf.constant(np.asarray(array, np.int32))
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(array, np.int32))


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def forward(framework: str, model, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Logits (float32 numpy) and loss (float, when `batch` has labels) of one forward."""
    kwargs = {k: _tensor(framework, v) for k, v in batch.items()}
    if framework in ("pt", REFERENCE):
        import torch

        with torch.no_grad():
            out = model(**kwargs)
    else:
        out = model(**kwargs)
    loss = out.loss if "labels" in batch else None
    return {"logits": _numpy(out.logits).astype(np.float32),
            "loss": None if loss is None else float(_numpy(loss))}


def generate(framework: str, model, batch: Mapping[str, np.ndarray],
             **settings: Any) -> np.ndarray:
    """`model.generate` on `batch`'s input_ids / attention_mask with `settings` -> token ids
    (int64 numpy), without gradients in torch."""
    kwargs = {k: _tensor(framework, batch[k]) for k in ("input_ids", "attention_mask")}
    if framework in ("pt", REFERENCE):
        import torch

        with torch.no_grad():
            out = model.generate(**kwargs, **settings)
    else:
        out = model.generate(**kwargs, **settings)
    return _numpy(getattr(out, "sequences", out)).astype(np.int64)


def greedy(framework: str, model, batch: Mapping[str, np.ndarray], max_new_tokens: int,
           **ids: int | None) -> np.ndarray | None:
    """Greedy `generate` token ids, or None when the backend has no `generate` yet."""
    if not hasattr(model, "generate"):
        return None
    return generate(framework, model, batch, max_new_tokens=max_new_tokens, do_sample=False,
                    num_beams=1, **{k: v for k, v in ids.items() if v is not None})


def _tokens(rng: np.random.Generator, shape: tuple[int, int], vocab: int,
            pad: int | None) -> np.ndarray:
    """Random ids in [1, vocab) other than `pad` (a pad id inside a sequence would shift
    RoBERTa's positions)."""
    skip = pad is not None and pad >= 1
    ids = rng.integers(1, vocab - skip, shape)
    return ids + (skip & (ids >= (pad or 0)))


def random_batch(config: EncoderDecoderConfig, *, seed: int = 0, batch: int = 2,
                 src_len: int = 12, tgt_len: int = 8,
                 labels: bool = False) -> dict[str, np.ndarray]:
    """Random token ids for a forward: row 1 of the source is padded (mask 0, the encoder's pad
    id) at the end. Lengths are capped by each side's position table (`registry.max_positions`,
    RoBERTa's offset included)."""
    rng = np.random.default_rng(seed)
    enc, dec = config.encoder, config.decoder
    src_len = min(src_len, max_positions(enc))
    tgt_len = min(tgt_len, max_positions(dec))
    top_pad = config.pad_token_id if config.pad_token_id is not None else 0
    enc_pad = enc.pad_token_id if enc.pad_token_id is not None else top_pad
    input_ids = _tokens(rng, (batch, src_len), enc.vocab_size, enc_pad)
    attention_mask = np.ones((batch, src_len), np.int64)
    attention_mask[-1, src_len // 2:] = 0
    input_ids[attention_mask == 0] = enc_pad
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    target = _tokens(rng, (batch, tgt_len), dec.vocab_size,
                     dec.pad_token_id if dec.pad_token_id is not None else top_pad)
    if labels:
        target[-1, -2:] = IGNORE_INDEX
        out["labels"] = target
    else:
        out["decoder_input_ids"] = target
    return out


@contextlib.contextmanager
def staged(tensors: Iterable[tuple[str, np.ndarray]], config: Mapping[str, Any],
           generation: GenerationConfig | None = None) -> Iterator[Path]:
    """A temporary float32 checkpoint of canonical `tensors` that every backend loads."""
    with tempfile.TemporaryDirectory(prefix="encdec-stage-") as tmp:
        d = write_checkpoint(Path(tmp) / "ckpt",
                             ((n, np.asarray(a, np.float32)) for n, a in tensors),
                             config={**config, "dtype": "float32"},
                             generation_config=generation.to_dict() if generation else None)
        yield d
