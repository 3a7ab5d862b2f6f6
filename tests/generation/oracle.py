"""The transformers oracle for generation and parity tests: reference models of every pair in
`tests.conftest.PAIRS`, their `generate`, and next-token logits functions for
`encdec.core.generation.generate_reference`."""

from __future__ import annotations

import functools
import tempfile
import warnings

import numpy as np

from encdec.core import EncoderDecoderConfig
from tests.conftest import PAIRS, build_reference, make_batch, tie_encoder_decoder

STD = 0.15  # see `reference`


def reference(name: str, seed: int = 0):
    """transformers' EncoderDecoderModel with random weights (cached per process), its
    matrices redrawn at std 0.15: at the reference's init (0.02) these tiny models emit nearly
    the same tokens for every input, which would let a wrong mask or beam reorder pass."""
    return _reference(name, seed)


@functools.lru_cache(maxsize=None)
def _reference(name: str, seed: int):
    import torch

    model = build_reference(name, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied weights are one parameter: redrawn once
            if p.dim() == 2:
                p.normal_(0.0, STD, generator=g)
    if PAIRS[name].tie:
        tie_encoder_decoder(model)
    return model


def core_config(model) -> EncoderDecoderConfig:
    """Our core config for a transformers model (through its config dict)."""
    return EncoderDecoderConfig.from_dict(model.config.to_dict())


def batch(seed: int = 0, size: int = 3, src_len: int = 9,
          name: str = "bert2bert") -> tuple[np.ndarray, np.ndarray]:
    """A padded encoder batch (input_ids, attention_mask), int64, padded with the encoder's
    padding id of pair `name`."""
    b = make_batch(seed, batch=size, src_len=src_len, pad=PAIRS[name].pad("encoder"))
    return b["input_ids"], b["attention_mask"]


def hf_generate(model, input_ids: np.ndarray, attention_mask: np.ndarray | None, **kwargs):
    """transformers' generate on numpy inputs; returns numpy (or a dict of numpy)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = None if attention_mask is None else torch.as_tensor(attention_mask)
        out = model.generate(torch.as_tensor(input_ids), attention_mask=mask, **kwargs)
    if isinstance(out, torch.Tensor):
        return out.numpy()
    return {k: (tuple(s.numpy() for s in v) if isinstance(v, tuple) else v.numpy())
            for k, v in out.items() if k in ("sequences", "sequences_scores", "scores",
                                             "beam_indices")}


def logits_fn(model, input_ids: np.ndarray, attention_mask: np.ndarray, expand: int):
    """Next-token logits by a full (uncached) forward; encoder rows repeated `expand` times."""
    import torch

    ids = torch.as_tensor(np.repeat(input_ids, expand, 0))
    mask = torch.as_tensor(np.repeat(attention_mask, expand, 0))
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=ids, attention_mask=mask)

    def fn(decoder_input_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(encoder_outputs=enc, attention_mask=mask,
                        decoder_input_ids=torch.as_tensor(decoder_input_ids), use_cache=False)
        return out.logits[:, -1].float().numpy()

    return fn


def eos_at_step(model, input_ids: np.ndarray, attention_mask: np.ndarray, step: int = 2) -> int:
    """A token the reference's greedy search emits at `step` (1-based) for example 0 — used as
    eos so that early stopping really happens."""
    seqs = hf_generate(model, input_ids, attention_mask, max_new_tokens=step + 1,
                       eos_token_id=None, do_sample=False, num_beams=1)
    return int(seqs[0, step])


def checkpoint(name: str, seed: int = 0) -> str:
    """A directory holding `reference(name, seed)` saved by transformers (per process)."""
    return _checkpoint(name, seed)


@functools.lru_cache(maxsize=None)
def _checkpoint(name: str, seed: int) -> str:
    d = tempfile.mkdtemp(prefix=f"encdec-gen-{name}-{seed}-")
    reference(name, seed).save_pretrained(d)
    return d
