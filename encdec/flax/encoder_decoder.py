"""`EncoderDecoderModel` in Flax NNX: transformers' `EncoderDecoderModel` (encoder + causal
decoder with cross-attention, `enc_to_dec_proj` when hidden sizes differ, labels shifted into
decoder inputs, mean cross-entropy ignoring -100 — a loss the reference's Flax class lacks),
its load/save class methods through `encdec.core.modeling`, and the static-cache decoding
contract (`init_cache`, `decode_step`), traceable under `jax.jit` / `nnx.jit`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import registry, seq2seq, validation, weights
from encdec.core.config import EncoderDecoderConfig, GenerationConfig, ModelConfig
from encdec.core.modeling import Backend, load_pretrained, save_pretrained
from encdec.core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec.core.registry import check_length, family_class
from encdec.core.seq2seq import (
    IGNORE_INDEX,
    resolve_outputs,
    route_forward_kwargs,
    shift_token_ids,
)
from encdec.core.tokenizer_files import Tokenizers
from encdec.core.warm_start import warm_start
from encdec.core.weights import Dialect
from encdec.export import export_model

from . import generation, params
from .bart import BartDecoder, BartForCausalLM
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model
from .layers import cross_entropy, default_rngs, dense
from .params import host_array

logger = logging.getLogger("encdec")

# family (`encdec.core.registry.Architecture.family`) -> (base model, causal LM or None)
FAMILIES: dict[str, tuple[type[nnx.Module], type[nnx.Module] | None]] = {
    "bert": (BertModel, BertLMHeadModel),
    "distilbert": (DistilBertModel, None),
    "gpt2": (GPT2Model, GPT2LMHeadModel),
    "bart": (BartDecoder, BartForCausalLM),
}


def encoder_class(config: ModelConfig) -> type[nnx.Module]:
    """The class that serves `config` as the encoder."""
    return family_class(FAMILIES, config, decoder=False)


def decoder_class(config: ModelConfig) -> type[nnx.Module]:
    """The class that serves `config` as the decoder (the registry's clear error for an
    encoder-only architecture)."""
    return family_class(FAMILIES, config, decoder=True)


def check_decoder(decoder: nnx.Module) -> None:
    """Refuse a decoder object without cross-attention layers (core's `check_decoder`)."""
    seq2seq.check_decoder(type(decoder).__name__, decoder.config, params.variables(decoder),
                          Dialect.NNX)


def extra_forward_args(module: nnx.Module) -> frozenset[str]:
    """The __call__ arguments of a backbone a caller may pass through the composite."""
    return seq2seq.extra_forward_args(module.__call__)

# per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v)
Cache = tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array], ...]


class EncoderDecoderModel(nnx.Module):
    """An encoder and a cross-attending decoder, numerically identical to the reference.

    Built (and loaded) in inference mode: `model.train()` turns dropout on, `model.eval()` off.
    """

    def __init__(self, config: EncoderDecoderConfig | None = None, *,
                 encoder: nnx.Module | None = None, decoder: nnx.Module | None = None,
                 rngs: nnx.Rngs | None = None):
        if config is None:
            if encoder is None or decoder is None:
                raise ValueError("Either a configuration or an encoder and a decoder has to be "
                                 "provided.")
            check_decoder(decoder)
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config,
                                                                       decoder.config)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ValueError("config: expected an EncoderDecoderConfig, got "
                             f"{type(config).__name__}")
        rngs = default_rngs(rngs)
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
        self.tokenizers = Tokenizers()  # set by the loaders: the checkpoint's
        if encoder is None:
            encoder = encoder_class(config.encoder)(config.encoder, rngs=rngs)
        if decoder is None:
            decoder = decoder_class(config.decoder)(config.decoder, rngs=rngs)
        self.encoder, self.decoder = encoder, decoder
        self.enc_to_dec_proj = dense(config.encoder.hidden_size, config.decoder.hidden_size,
                                     rngs=rngs) if weights.has_enc_to_dec_proj(config) else None
        # the backbones share the composite's configs, so `model.config.decoder.x = …` reaches them
        self.encoder.config, self.decoder.config = config.encoder, config.decoder
        table = self.table()
        self.tie_weights()
        own = {p.name for p in table.owned} - \
            {f"{side}.{p.name}" for side in ("encoder", "decoder")
             for p in getattr(self, side).table().owned}  # the backbones initialised theirs
        params.init_params(self, table, config.decoder, own, rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return registry.encoder_decoder_table(self.config)

    def tie_weights(self) -> None:
        """Tie the decoder's head biases and, with `tie_encoder_decoder`, the decoder's base
        weights to the encoder's Variables (the encoder's values win, as in the reference)."""
        params.tie_params(self, self.table())

    def get_encoder(self) -> nnx.Module:
        return self.encoder

    # --- forward --------------------------------------------------------------------------

    def _project(self, encoder_hidden_states: jax.Array) -> jax.Array:
        if self.enc_to_dec_proj is not None:
            return self.enc_to_dec_proj(encoder_hidden_states)  # (B, S, H_dec)
        return encoder_hidden_states

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 decoder_input_ids: jax.Array | None = None,
                 decoder_attention_mask: jax.Array | None = None,
                 encoder_outputs: tuple | BaseModelOutput | None = None,
                 past_key_values: tuple | None = None, inputs_embeds: jax.Array | None = None,
                 decoder_inputs_embeds: jax.Array | None = None, labels: jax.Array | None = None,
                 use_cache: bool | None = None, output_attentions: bool | None = None,
                 output_hidden_states: bool | None = None,
                 return_dict: bool | None = None, **kwargs: Any) -> Seq2SeqLMOutput | tuple:
        """As the reference's forward; `past_key_values` in its legacy per-layer tuple format
        `(self_k, self_v, cross_k, cross_v)`. Extra keyword arguments go to the encoder, the
        `decoder_`-prefixed ones to the decoder (`token_type_ids`, `decoder_position_ids`, …);
        unset output switches come from the configs."""
        flags = resolve_outputs(self.config, output_attentions, output_hidden_states, use_cache,
                                return_dict)
        validation.check_forward(self.config, input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=decoder_input_ids,
                                  decoder_attention_mask=decoder_attention_mask,
                                  encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                  inputs_embeds=inputs_embeds,
                                  decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
                                  host=host_array)  # before anything runs on them
        enc_kwargs, dec_kwargs = route_forward_kwargs(kwargs, extra_forward_args(self.encoder),
                                                      extra_forward_args(self.decoder))
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds,
                                           output_attentions=flags.encoder_attentions,
                                           output_hidden_states=flags.encoder_hidden_states,
                                           **enc_kwargs)
        elif isinstance(encoder_outputs, tuple):  # as the reference's BaseModelOutput(*tuple)
            names = ("last_hidden_state", "hidden_states", "attentions")
            encoder_outputs = BaseModelOutput(**dict(zip(names, encoder_outputs, strict=False)))
        states = self._project(encoder_outputs["last_hidden_state"])

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).astype(
                    decoder_input_ids.dtype)

        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=states,
                           encoder_attention_mask=attention_mask, past_key_values=past_key_values,
                           use_cache=flags.use_cache, output_attentions=flags.decoder_attentions,
                           output_hidden_states=flags.decoder_hidden_states, **dec_kwargs)
        loss = None if labels is None else cross_entropy(dec.logits, labels)  # (B, T, V) vs (B, T)
        out = Seq2SeqLMOutput(
            loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs["last_hidden_state"],
            encoder_hidden_states=encoder_outputs.get("hidden_states"),
            encoder_attentions=encoder_outputs.get("attentions"))
        return out if flags.return_dict else out.to_tuple()

    def prepare_decoder_input_ids_from_labels(self, labels: jax.Array) -> jax.Array:
        """labels -> decoder_input_ids (core rule: shift right, start id, -100 -> pad)."""
        pad, start = shift_token_ids(self.config.pad_token_id, self.config.decoder_start_token_id)
        shifted = jnp.concatenate([jnp.full_like(labels[:, :1], start), labels[:, :-1]], axis=1)
        return jnp.where(shifted == IGNORE_INDEX, pad, shifted)  # (B, T)

    # --- static-cache decoding contract -----------------------------------------------------

    def init_cache(self, encoder_hidden_states: jax.Array, encoder_attention_mask: jax.Array | None,
                   batch_size: int, max_length: int) -> Cache:
        """Per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v): zero self buffers
        (batch_size, h, max_length, d); cross K/V (Be, h, S, d) computed once from the
        (projected) encoder states. `batch_size` may be Be * num_beams. The mask is applied
        by `decode_step`."""
        c = self.config.decoder
        check_length(c, "the decoding cache (max_length)", max_length)
        h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        states = self._project(encoder_hidden_states)
        shape = (batch_size, h, max_length, d)
        # distinct buffers (not one shared zeros array), so a caller may donate each of them
        return tuple((jnp.zeros(shape, states.dtype), jnp.zeros(shape, states.dtype), ck, cv)
                     for ck, cv in self.decoder.cross_kv(states))

    def decode_step(self, decoder_input_ids: jax.Array, cache: Cache, cache_index: int | jax.Array,
                    encoder_attention_mask: jax.Array | None,
                    decoder_attention_mask: jax.Array | None = None) -> tuple[jax.Array, Cache]:
        """decoder_input_ids (B, T) at positions cache_index + arange(T) -> (logits (B, T, V),
        new cache). Self buffers are updated with `dynamic_update_slice`; cross K/V are never
        repeated across beams. `decoder_attention_mask` (B, max_length), optional, masks padded
        cache positions. Pure in its arrays: runs under `jax.jit` with a traced `cache_index`.
        Runs without dropout even after `model.train()`."""
        return self._inference_decoder().step(decoder_input_ids, cache, cache_index,
                                              encoder_attention_mask, decoder_attention_mask)

    def _inference_decoder(self) -> nnx.Module:
        """The decoder, or (in train mode) a view of it with dropout off sharing its weights."""
        if all(m.deterministic for _, m in nnx.iter_modules(self.decoder)
               if isinstance(m, nnx.Dropout)):
            return self.decoder
        return nnx.view(self.decoder, deterministic=True, raise_if_not_found=False)

    def generate(self, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        """Token ids starting with the decoder start id (see `encdec.flax.generation.generate`:
        one jitted `lax.while_loop` program per strategy and input bucket)."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    def export(self, directory: str | os.PathLike, format: str | None = None,
               **kwargs: Any) -> os.PathLike:
        """Export for deployment (default format "jax"), verified token for token against
        `generate` in a fresh process and written atomically (see
        `encdec.export.export_model`; `kwargs`: generation settings fixed in the artefact,
        `verify_output=False`)."""
        return export_model(self, directory, format, **kwargs)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
            cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
            decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *,
            encoder_model: nnx.Module | None = None, decoder_model: nnx.Module | None = None,
            output_loading_info: bool = False, rngs: nnx.Rngs | None = None, **kwargs: Any):
        """Warm-start from two single-model checkpoints (`encoder_*` / `decoder_*` kwargs go to
        that side's config, the others to the composite's), or use a model object given as
        `encoder_model` / `decoder_model` for that side (as the reference). Weights a checkpoint
        lacks are initialised (from `rngs`, Flax's own argument) and reported (a given side's
        report is empty); the model is returned in eval mode (with `{"encoder": report,
        "decoder": report}`). `dtype=` loads both sides in that dtype (default: the sides' own,
        `encoder_dtype=` / `decoder_dtype=` or their checkpoints', which must agree). Any other
        keyword is a TypeError naming it, before any file is read
        (`encdec.core.warm_start`)."""
        model, reports = warm_start(_backend(cls, rngs), encoder_pretrained_model_name_or_path,
                                    decoder_pretrained_model_name_or_path,
                                    encoder_model=encoder_model, decoder_model=decoder_model,
                                    **kwargs)
        return (model, reports) if output_loading_info else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        output_loading_info: bool = False, rngs: nnx.Rngs | None = None,
                        **kwargs: Any):
        """Load a composite checkpoint (strict: every weight must be there), in eval mode, in
        `dtype=` (or `torch_dtype=`; default "auto": the checkpoint's dtype, as the reference);
        other keywords are EncoderDecoderConfig fields (or `config=`), anything else a
        TypeError naming it (`encdec.core.modeling.load_pretrained`). Weights are allocated
        once, from the checkpoint: there is no random init to discard (`rngs`: the dropout
        streams). With `output_loading_info`, also the load report."""
        model, report = load_pretrained(_backend(cls, rngs), pretrained_model_name_or_path,
                                        **kwargs)
        return (model, report) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike,
                        max_shard_size: int | str = "5GB") -> os.PathLike:
        """Write config.json, generation_config.json, safetensors weights and the tokenizer
        files the model was loaded with (`encdec.core.tokenizer_files`) atomically."""
        return save_pretrained(save_directory, self.config, self.generation_config, Dialect.NNX,
                               functools.partial(params.get, self), max_shard_size=max_shard_size,
                               dtype=params.dtype_of(self),
                               tokenizers=self.tokenizers)


def _build(cls: type[EncoderDecoderModel], rngs: nnx.Rngs | None,
           config: EncoderDecoderConfig, dtype: str, encoder: nnx.Module | None,
           decoder: nnx.Module | None) -> EncoderDecoderModel:
    """The composite for a load, around the given backbones: what is loaded is abstract
    (`params.abstract`: shapes only, no random init) until assigned, held in `dtype`."""
    if encoder is None and decoder is None:
        model = params.abstract(lambda: cls(config=config), rngs)
    else:  # a backbone not given is built abstract, then the composite around the two
        sides = {}
        for side, given, klass in (("encoder", encoder, encoder_class),
                                   ("decoder", decoder, decoder_class)):
            c = getattr(config, side)
            sides[side] = given if given is not None else \
                params.abstract(lambda c=c, klass=klass: klass(c)(c), rngs)
        model = cls(config=config, encoder=sides["encoder"], decoder=sides["decoder"],
                    rngs=default_rngs(rngs))
    params.cast(model, dtype)
    return model


def _backend(cls: type[EncoderDecoderModel], rngs: nnx.Rngs | None) -> Backend:
    """The hooks of `encdec.core.modeling.load_pretrained` and `encdec.core.warm_start`; the
    random init of what a checkpoint lacks draws from `rngs` (default `nnx.Rngs(0)`)."""
    return dataclasses.replace(
        params.BACKEND, build=functools.partial(_build, cls, rngs),
        init=functools.partial(params.init_params, rngs=default_rngs(rngs)), cast=params.cast,
        check_decoder=check_decoder)


FlaxEncoderDecoderModel = EncoderDecoderModel
