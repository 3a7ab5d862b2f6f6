"""Seq2seq semantics shared by every backend, following transformers' `EncoderDecoderModel`.

The numpy functions here are the reference the backends' tensor code is tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import EncoderDecoderConfig, GenerationConfig

IGNORE_INDEX = -100


def shift_token_ids(pad_token_id: int | None,
                    decoder_start_token_id: int | None) -> tuple[int, int]:
    """The (pad, start) ids that shifting labels needs; a clear error when one is unset.

    Backends shift with their own tensor ops (traceable); this holds the rule's checks.
    """
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id is not set: it is needed to build "
                         "decoder_input_ids from labels (e.g. model.config.decoder_start_token_id"
                         " = tokenizer.cls_token_id)")
    if pad_token_id is None:
        raise ValueError("config.pad_token_id is not set: it is needed to replace -100 in labels "
                         "(e.g. model.config.pad_token_id = tokenizer.pad_token_id)")
    return int(pad_token_id), int(decoder_start_token_id)


def shift_tokens_right(labels: np.ndarray, pad_token_id: int | None,
                       decoder_start_token_id: int | None) -> np.ndarray:
    """labels -> decoder_input_ids: prepend the start id, drop the last, -100 -> pad."""
    pad_token_id, decoder_start_token_id = shift_token_ids(pad_token_id, decoder_start_token_id)
    out = np.empty_like(labels)
    out[..., 1:] = labels[..., :-1]
    out[..., 0] = decoder_start_token_id
    return np.where(out == IGNORE_INDEX, pad_token_id, out)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean token cross-entropy over positions whose label is not -100 (float64)."""
    logits = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    z = logits[keep] - logits[keep].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(keep.sum()), labels[keep]].mean())


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`from_encoder_decoder_pretrained` kwargs: `encoder_*`, `decoder_*`, and the rest.

    `decoder_start_token_id` belongs to the composite config, as in the reference.
    """
    enc, dec, rest = {}, {}, {}
    for k, v in kwargs.items():
        if k.startswith("encoder_"):
            enc[k.removeprefix("encoder_")] = v
        elif k.startswith("decoder_") and k != "decoder_start_token_id":
            dec[k.removeprefix("decoder_")] = v
        else:
            rest[k] = v
    return enc, dec, rest


def decoder_start_token_id(config: EncoderDecoderConfig, generation: GenerationConfig | None = None,
                           override: int | None = None) -> int:
    """Resolve the first decoder token: call, generation config, model config, decoder bos."""
    for value in (override, generation and generation.decoder_start_token_id,
                  config.decoder_start_token_id, config.decoder.bos_token_id):
        if value is not None:
            return int(value)
    raise ValueError(
        "decoder_start_token_id is not set. Set it on the model (model.config."
        "decoder_start_token_id = tokenizer.cls_token_id), in model.generation_config, or pass "
        "decoder_start_token_id=... to generate().")
