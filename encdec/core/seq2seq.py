"""Seq2seq semantics shared by every backend, following transformers' `EncoderDecoderModel`.

The numpy functions here are the reference the backends' tensor code is tested against.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import EncoderDecoderConfig, GenerationConfig
from .registry import architecture
from .weights import Dialect, leaf

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


# arguments of a backbone's forward that the composite passes itself (Keras' `training` too);
# the others (`token_type_ids`, `position_ids`) may be given per side through the composite
COMPOSITE_ARGS = frozenset({
    "self", "input_ids", "attention_mask", "inputs_embeds", "encoder_hidden_states",
    "encoder_attention_mask", "past_key_values", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "labels", "training"})


def extra_forward_args(forward: Callable[..., Any]) -> frozenset[str]:
    """The arguments of a backbone's `forward` / `call` / `__call__` that a caller may pass
    through the composite (for `route_forward_kwargs`)."""
    return frozenset(inspect.signature(forward).parameters) - COMPOSITE_ARGS


def check_decoder(name: str, config: Any, paths: Collection[str], dialect: Dialect) -> None:
    """Refuse a decoder object without cross-attention layers, or of an encoder-only
    architecture. The layers are found from the parameter `paths` the object holds (in
    `dialect`), not from its config's flag: the composite config sets `is_decoder` and
    `add_cross_attention` (as the reference does), and setting the flag on a built decoder
    builds no layer."""
    arch = architecture(config)
    arch.require_decoder()
    flags = {flag: dataclasses.replace(config, is_decoder=True, add_cross_attention=flag)
             for flag in (True, False)}
    cross = ({leaf(p, dialect) for p in arch.decoder_table(flags[True]).params}
             - {leaf(p, dialect) for p in arch.decoder_table(flags[False]).params})
    if not cross <= set(paths):
        raise ValueError(f"decoder {name} has no cross-attention layers to attend to the "
                         "encoder: build it with add_cross_attention=True in its config")


def route_forward_kwargs(kwargs: dict[str, Any], encoder_args: Collection[str],
                         decoder_args: Collection[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reference's routing of `forward`'s extra keyword arguments: `decoder_`-prefixed ones
    go to the decoder (prefix dropped), the others to the encoder. A name the side does not
    accept is a TypeError naming it (never swallowed)."""
    enc: dict[str, Any] = {}
    dec: dict[str, Any] = {}
    for key, value in kwargs.items():
        side, name, accepted = (("decoder", key.removeprefix("decoder_"), decoder_args)
                                if key.startswith("decoder_") else ("encoder", key, encoder_args))
        if name not in accepted:
            raise TypeError(f"forward() got an unexpected keyword argument {key!r}: the {side} "
                            f"accepts no {name!r} (it takes {sorted(accepted)})")
        (dec if side == "decoder" else enc)[name] = value
    return enc, dec


@dataclass(frozen=True)
class Outputs:
    """Which outputs a forward returns, resolved as the reference does: the argument, else the
    config (each side's own config for attentions and hidden states, the decoder's for
    `use_cache`, the composite's for `return_dict`)."""

    encoder_attentions: bool
    encoder_hidden_states: bool
    decoder_attentions: bool
    decoder_hidden_states: bool
    use_cache: bool
    return_dict: bool


def _flag(config: Any, name: str, default: bool) -> bool:
    value = getattr(config, name, None)
    return default if value is None else bool(value)


def resolve_outputs(config: EncoderDecoderConfig, output_attentions: bool | None = None,
                    output_hidden_states: bool | None = None, use_cache: bool | None = None,
                    return_dict: bool | None = None) -> Outputs:
    """Resolve `forward`'s output switches (argument first, then config)."""
    def pick(arg: bool | None, side: Any, name: str, default: bool) -> bool:
        return bool(arg) if arg is not None else _flag(side, name, default)

    return Outputs(
        encoder_attentions=pick(output_attentions, config.encoder, "output_attentions", False),
        encoder_hidden_states=pick(output_hidden_states, config.encoder, "output_hidden_states",
                                   False),
        decoder_attentions=pick(output_attentions, config.decoder, "output_attentions", False),
        decoder_hidden_states=pick(output_hidden_states, config.decoder, "output_hidden_states",
                                   False),
        use_cache=pick(use_cache, config.decoder, "use_cache", True),
        return_dict=pick(return_dict, config, "return_dict", True))
