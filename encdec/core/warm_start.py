"""`from_encoder_decoder_pretrained`, written once for every backend (the reference's warm
start): each side from a single-model checkpoint (or a given backbone object), the decoder made
a cross-attending decoder, the composite built around them, the weights the checkpoints hold
loaded, the ones they lack initialised and reported, then `modeling.finish`.

A backend supplies only its `modeling.Backend` hooks (build, assign, initialise, cast, ...).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .config import EncoderDecoderConfig, ModelConfig
from .modeling import (
    DTYPE_OPTIONS,
    WARM_START_OPTIONS,
    Backend,
    check_kwargs,
    config_keys,
    finish,
    load_weights,
    read_backbone_config,
    side_config_keys,
    take_dtype,
    warm_start_dtype,
)
from .registry import encoder_decoder_table
from .seq2seq import split_kwargs
from .tokenizer_files import Tokenizers, find
from .weights import LoadReport, leaf

logger = logging.getLogger("encdec")

SIDES = ("encoder", "decoder")
# the config flags each side is loaded with (as the reference's AutoModel /
# AutoModelForCausalLM calls): the decoder a causal decoder with cross-attention
SIDE_FLAGS: dict[str, dict[str, bool]] = {
    "encoder": {}, "decoder": {"is_decoder": True, "add_cross_attention": True}}


def warm_start_keys() -> frozenset[str]:
    """Every keyword `from_encoder_decoder_pretrained` takes besides the two paths: the
    composite config's fields, `encoder_<field>` / `decoder_<field>` of any registered config
    class (the side's own class is checked once its config.json is read) and the loader
    options (`modeling.WARM_START_OPTIONS`)."""
    sides = side_config_keys()
    top = config_keys(EncoderDecoderConfig) - {"encoder", "decoder"}
    return frozenset(top | set(WARM_START_OPTIONS)
                     | {f"{s}_{k}" for s in SIDES for k in sides | set(DTYPE_OPTIONS)})


def warm_start(backend: Backend, encoder_path: str | os.PathLike | None,
               decoder_path: str | os.PathLike | None, *, encoder_model: Any = None,
               decoder_model: Any = None,
               caller: str = "EncoderDecoderModel.from_encoder_decoder_pretrained",
               **kwargs: Any) -> tuple[Any, dict[str, LoadReport]]:
    """The composite warm-started from two checkpoints (or backbone objects), and per side the
    load report ({"encoder": …, "decoder": …}; empty for a given side). `encoder_*` /
    `decoder_*` kwargs go to that side's config, the others to the composite's; `dtype=` loads
    both sides in it (see `modeling.warm_start_dtype`). A keyword nobody takes is a TypeError
    raised before any file is read."""
    check_kwargs(caller, kwargs, warm_start_keys())
    requested = take_dtype(kwargs)
    enc_kwargs, dec_kwargs, rest = split_kwargs(kwargs)
    overrides = {"encoder": enc_kwargs, "decoder": dec_kwargs}
    paths = {"encoder": encoder_path, "decoder": decoder_path}
    given = {"encoder": encoder_model, "decoder": decoder_model}
    configs: dict[str, ModelConfig] = {}
    dirs: dict[str, Any] = {}
    for side in SIDES:
        if given[side] is not None:
            if paths[side] is not None:
                raise ValueError(f"{side}_model and {side}_pretrained_model_name_or_path="
                                 f"{paths[side]!r} both given: pass one of them")
            if overrides[side]:
                raise ValueError(f"{sorted(f'{side}_{k}' for k in overrides[side])} given "
                                 f"with {side}_model: set them on {side}_model.config")
            if side == "decoder":
                backend.check_decoder(given[side])
            dirs[side], configs[side] = None, given[side].config
            configs[side].extra["dtype"] = backend.dtype_of(given[side])  # what it holds
        elif paths[side] is None:
            raise ValueError(f"no {side}: pass {side}_pretrained_model_name_or_path (a "
                             f"checkpoint path or id) or {side}_model (a model object)")
        else:
            dirs[side], configs[side] = read_backbone_config(
                paths[side] or "", caller=caller, **{**SIDE_FLAGS[side], **overrides[side]})
    enc = configs["encoder"]
    if dirs["encoder"] is not None and (enc.is_decoder or enc.add_cross_attention):
        logger.info("encoder config had is_decoder/add_cross_attention set: turning them off")
        enc.is_decoder = enc.add_cross_attention = False
    config = EncoderDecoderConfig.from_encoder_decoder_configs(enc, configs["decoder"], **rest)
    tokenizers = Tokenizers(find(dirs["encoder"]), find(dirs["decoder"]))
    set_ids_from_tokenizer(config, tokenizers, given=rest)
    dtype = warm_start_dtype(config, requested)

    model = backend.build(config, dtype, encoder_model, decoder_model)
    backend.cast(model, dtype)  # a given side too: one dtype in the model
    table = encoder_decoder_table(config)
    # with tie_encoder_decoder the decoder's base shares the encoder's storage: the encoder's
    # values win (as the reference), whether loaded or given, so shared ones are not written
    shared = {p.name for p in table.params
              if p.tied_to is not None and p.tied_to.startswith("encoder.")}
    shared_paths = {leaf(table.by_name[n], backend.dialect) for n in shared}
    reports = {side: LoadReport([], [], []) for side in SIDES}
    for side in SIDES:
        if dirs[side] is None:
            continue
        sub = getattr(model, side)

        def assign(path: str, array: Any, side: str = side) -> None:
            if f"{side}.{path}" not in shared_paths:
                backend.assign(model, f"{side}.{path}", array)

        side_table = sub.table()
        reports[side] = load_weights(side_table, dirs[side], backend.dialect, assign,
                                     strict=False)
        text = reports[side].summary(f"the {side} ({dirs[side]})")
        if text:
            logger.warning("%s\nYou should probably fine-tune this model before using it.", text)
        backend.init(sub, side_table, getattr(config, side),
                     [n for n in reports[side].missing if f"{side}.{n}" not in shared])
    own = [p.name for p in table.owned if not p.name.startswith(("encoder.", "decoder."))]
    if own:  # the composite's own weights (`enc_to_dec_proj`): no checkpoint holds them
        backend.init(model, table, config.decoder, own)
    model.tokenizers = tokenizers
    return finish(backend, model), reports


def set_ids_from_tokenizer(config: EncoderDecoderConfig, tokenizers: Tokenizers, *,
                           given: dict[str, Any]) -> None:
    """The composite's `decoder_start_token_id` and `pad_token_id`, and its `eos_token_id`
    where the decoder's config has none, from the decoder's tokenizer
    (`Tokenizers.composite_ids`), unless given as keywords or already set."""
    for key, value in tokenizers.composite_ids().items():
        if key in given:
            continue
        if key == "eos_token_id":
            if config.decoder.eos_token_id is None:
                config.extra.setdefault(key, value)
        elif getattr(config, key) is None:
            setattr(config, key, value)
