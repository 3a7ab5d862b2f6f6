"""`EncoderDecoderModel` in Keras 3: transformers' `EncoderDecoderModel` (encoder + causal
decoder with cross-attention, `enc_to_dec_proj` when hidden sizes differ, labels shifted into
decoder inputs, mean cross-entropy ignoring -100), its load/save class methods through
`encdec.core.modeling`, `model.fit` with the model's own loss, and the static-cache decoding
contract (`init_cache`, `decode_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from encdec.core import registry, seq2seq, validation, weights
from encdec.core.config import EncoderDecoderConfig, GenerationConfig, ModelConfig
from encdec.core.modeling import Backend, load_pretrained, save_pretrained
from encdec.core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec.core.registry import check_length, family_class
from encdec.core.tokenizer_files import Tokenizers
from encdec.core.warm_start import warm_start
from encdec.core.weights import Dialect
from encdec.export import export_model

from . import generation, params
from .bart import BartDecoder, BartForCausalLM
from .base import Model
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model
from .layers import cross_entropy, dense
from .params import host_array

# the registry's family -> (base model class, causal LM class or None); the only class list
FAMILIES: dict[str, tuple[type[keras.Model], type[keras.Model] | None]] = {
    "bert": (BertModel, BertLMHeadModel),
    "distilbert": (DistilBertModel, None),
    "gpt2": (GPT2Model, GPT2LMHeadModel),
    "bart": (BartDecoder, BartForCausalLM),
}


def encoder_class(config: ModelConfig) -> type[keras.Model]:
    """The class that serves `config` as the encoder."""
    return family_class(FAMILIES, config, decoder=False)


def decoder_class(config: ModelConfig) -> type[keras.Model]:
    """The class that serves `config` as the decoder (the registry's clear error for an
    encoder-only architecture)."""
    return family_class(FAMILIES, config, decoder=True)


def check_decoder(decoder: keras.Model) -> None:
    """Refuse a decoder object without cross-attention layers (core's `check_decoder`)."""
    seq2seq.check_decoder(type(decoder).__name__, decoder.config, params.variables(decoder),
                          Dialect.KERAS)


def extra_forward_args(module: keras.Model) -> frozenset[str]:
    """The call arguments of a backbone a caller may pass through the composite."""
    return seq2seq.extra_forward_args(module.call)


# per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v)
Cache = tuple[tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], ...]


class EncoderDecoderModel(Model):
    """An encoder and a cross-attending decoder, numerically identical to the reference."""

    def __init__(self, config: EncoderDecoderConfig | None = None, *,
                 encoder: keras.Model | None = None, decoder: keras.Model | None = None,
                 name: str = "encoder_decoder", **kwargs):
        super().__init__(name=name, **kwargs)
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
        elif decoder is not None:
            check_decoder(decoder)
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
        self.tokenizers = Tokenizers()  # set by the loaders: the checkpoint's
        if decoder is not None and config.tie_encoder_decoder:
            raise ValueError("tie_encoder_decoder=True needs the decoder built by the model "
                             "(pass a config, not a decoder object)")
        with params.constructing() as c:
            fresh = [side for side, given in (("encoder", encoder), ("decoder", decoder))
                     if given is None]
            self.encoder = encoder or encoder_class(config.encoder)(config.encoder,
                                                                    name="encoder")
            self.decoder = decoder or decoder_class(config.decoder)(config.decoder,
                                                                    name="decoder")
            self.enc_to_dec_proj = dense(config.decoder.hidden_size, "enc_to_dec_proj") \
                if weights.has_enc_to_dec_proj(config) else None
        # the backbones share the composite's configs, so `model.config.decoder.x = …` reaches them
        self.encoder.config, self.decoder.config = config.encoder, config.decoder
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            ids = tf.zeros((1, 1), tf.int32)
            self(input_ids=ids, decoder_input_ids=ids, use_cache=False)  # creates the variables
            params.materialize(self, [(sub, sub.table(), sub.config) for sub in
                                      (getattr(self, side) for side in fresh)])
            self._init_proj()
            self.tie_weights()

    def _init_proj(self) -> None:
        if self.enc_to_dec_proj is not None and not params.skipping_init():
            params.init_params(self, self.table(), self.config.decoder, ["enc_to_dec_proj.weight",
                                                                         "enc_to_dec_proj.bias"])

    def tie_weights(self) -> None:
        """Tie word embeddings inside the decoder and, with `tie_encoder_decoder`, the decoder's
        base weights to the encoder's (the encoder's values win, as in the reference)."""
        params.tie_params(self, self.table())

    def table(self) -> weights.Table:
        return registry.encoder_decoder_table(self.config)

    def get_encoder(self) -> keras.Model:
        return self.encoder

    # --- forward --------------------------------------------------------------------------

    def _project(self, encoder_hidden_states: tf.Tensor) -> tf.Tensor:
        if self.enc_to_dec_proj is not None:
            return self.enc_to_dec_proj(encoder_hidden_states)  # (B, S, H_dec)
        return encoder_hidden_states

    def call(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
             decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
             inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
             output_attentions=None, output_hidden_states=None, return_dict=None,
             training=False, **kwargs) -> Seq2SeqLMOutput | tuple:
        """As the reference's forward; `past_key_values` in its legacy per-layer tuple format
        `(self_k, self_v, cross_k, cross_v)`. Other keyword arguments go to the encoder
        (`token_type_ids`, `position_ids`, …) or, `decoder_`-prefixed, to the decoder (prefix
        dropped); a name that side does not take is a TypeError naming it. Output switches left
        None come from the configs (`resolve_outputs`). A dict as first argument (what
        `model.fit` passes from a dataset of dicts) is unpacked into the keyword arguments."""
        if isinstance(input_ids, Mapping):
            return self.call(**input_ids, training=training)
        enc_kwargs, dec_kwargs = seq2seq.route_forward_kwargs(
            kwargs, extra_forward_args(self.encoder), extra_forward_args(self.decoder))
        out_flags = seq2seq.resolve_outputs(self.config, output_attentions, output_hidden_states,
                                            use_cache, return_dict)
        validation.check_forward(self.config, input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=decoder_input_ids,
                                  decoder_attention_mask=decoder_attention_mask,
                                  encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                  inputs_embeds=inputs_embeds,
                                  decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
                                  host=host_array)  # before anything runs on them
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds,
                                           output_attentions=out_flags.encoder_attentions,
                                           output_hidden_states=out_flags.encoder_hidden_states,
                                           training=training, **enc_kwargs)
        elif isinstance(encoder_outputs, (tuple, list)):  # the reference's BaseModelOutput(*tuple)
            names = ("last_hidden_state", "hidden_states", "attentions")
            encoder_outputs = BaseModelOutput(**dict(zip(names, encoder_outputs, strict=False)))
        states = self._project(encoder_outputs["last_hidden_state"])

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = tf.cast(decoder_input_ids != self.config.pad_token_id,
                                                 decoder_input_ids.dtype)

        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=states,
                           encoder_attention_mask=attention_mask, past_key_values=past_key_values,
                           use_cache=out_flags.use_cache,
                           output_attentions=out_flags.decoder_attentions,
                           output_hidden_states=out_flags.decoder_hidden_states,
                           training=training, **dec_kwargs)
        loss = None if labels is None else cross_entropy(dec.logits, labels)  # (B, T, V), (B, T)
        out = Seq2SeqLMOutput(
            loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs["last_hidden_state"],
            encoder_hidden_states=encoder_outputs.get("hidden_states"),
            encoder_attentions=encoder_outputs.get("attentions"))
        return out if out_flags.return_dict else out.to_tuple()

    def prepare_decoder_input_ids_from_labels(self, labels: tf.Tensor) -> tf.Tensor:
        """labels -> decoder_input_ids (core rule: shift right, start id, -100 -> pad), in
        tensor ops (traceable)."""
        pad, start = seq2seq.shift_token_ids(self.config.pad_token_id,
                                             self.config.decoder_start_token_id)
        labels = tf.convert_to_tensor(labels)
        first = tf.fill([tf.shape(labels)[0], 1], tf.constant(start, labels.dtype))
        ids = tf.concat([first, labels[:, :-1]], axis=1)  # (B, T)
        return tf.where(ids == seq2seq.IGNORE_INDEX, tf.constant(pad, labels.dtype), ids)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """`model.fit` without a compiled loss trains on the model's own loss (labels in `x`),
        as the reference's TF models do; a loss given to `compile` is used as usual. Under a
        `tf.distribute` strategy the per-replica loss is divided by the number of replicas, as
        Keras does for compiled losses (gradients are summed across replicas)."""
        if self.loss is not None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        loss = y_pred["loss"] if isinstance(y_pred, Mapping) and "loss" in y_pred else None
        if loss is None:
            raise ValueError("EncoderDecoderModel.fit without a compiled loss needs `labels` in "
                             "the input dict (the model computes its own loss)")
        if self.losses:
            loss = loss + tf.add_n(self.losses)
        return loss / tf.distribute.get_strategy().num_replicas_in_sync

    # --- static-cache decoding contract -----------------------------------------------------

    def init_cache(self, encoder_hidden_states: tf.Tensor, encoder_attention_mask: tf.Tensor | None,
                   batch_size: int, max_length: int) -> Cache:
        """Per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v): zero self buffers
        (batch_size, h, max_length, d); cross K/V (Be, h, S, d) computed once from the
        (projected) encoder states. `batch_size` may be Be * num_beams."""
        c = self.config.decoder
        check_length(c, "the decoding cache (max_length)", max_length)
        h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        states = self._project(encoder_hidden_states)
        shape = (batch_size, h, max_length, d)
        return tuple((tf.zeros(shape, states.dtype), tf.zeros(shape, states.dtype), ck, cv)
                     for ck, cv in self.decoder.cross_kv(states))

    def decode_step(self, decoder_input_ids: tf.Tensor, cache: Cache, cache_index: int | tf.Tensor,
                    encoder_attention_mask: tf.Tensor | None,
                    decoder_attention_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, Cache]:
        """decoder_input_ids (B, T) at positions cache_index + arange(T) -> (logits (B, T, V),
        new cache). Self buffers are updated with a dynamic-update-slice; cross K/V are never
        repeated across beams. `decoder_attention_mask` (B, max_length), optional, masks padded
        cache positions. Under XLA, T must be static: slice a traced position with
        `ids[:, t, None]`, not `ids[:, t:t + 1]` (dynamic length, padded by XLA to its bound)."""
        return self.decoder.step(decoder_input_ids, cache, cache_index, encoder_attention_mask,
                                 decoder_attention_mask)

    def generate(self, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        """Token ids starting with the decoder start id (see `encdec.tf.generation.generate`:
        one XLA program per strategy and input bucket)."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    def export(self, directory: str | os.PathLike, format: str | None = None,
               **kwargs: Any) -> os.PathLike:
        """Export for deployment (default format "saved_model"), verified token for token
        against `generate` in a fresh process and written atomically (see
        `encdec.export.export_model`; `kwargs`: generation settings fixed in the artefact,
        `verify_output=False`)."""
        return export_model(self, directory, format, **kwargs)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
            cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
            decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *,
            encoder_model: keras.Model | None = None, decoder_model: keras.Model | None = None,
            output_loading_info: bool = False, **kwargs: Any):
        """Warm-start from two single-model checkpoints (`encoder_*` / `decoder_*` kwargs go to
        that side's config, the others to the composite's), or use a model object given as
        `encoder_model` / `decoder_model` for that side (as the reference). Weights a checkpoint
        lacks are initialised and reported (a given side's report is empty); the model is
        returned in inference mode (with `{"encoder": report, "decoder": report}`). `dtype=`
        loads both sides in that dtype (default: the sides' own, `encoder_dtype=` /
        `decoder_dtype=` or their checkpoints', which must agree; a given Keras model keeps the
        dtype it was built in). Any other keyword is a TypeError naming it, before any file is
        read (`encdec.core.warm_start`)."""
        model, reports = warm_start(_backend(cls), encoder_pretrained_model_name_or_path,
                                    decoder_pretrained_model_name_or_path,
                                    encoder_model=encoder_model, decoder_model=decoder_model,
                                    **kwargs)
        return (model, reports) if output_loading_info else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        output_loading_info: bool = False, **kwargs: Any):
        """Load a composite checkpoint in the one encdec format (the reference's PyTorch names;
        strict: every weight must be there), in `dtype=` (or `torch_dtype=`; default "auto":
        the checkpoint's dtype, as the reference); other keywords are EncoderDecoderConfig
        fields (or `config=`), anything else a TypeError naming it
        (`encdec.core.modeling.load_pretrained`). With `output_loading_info`, also the load
        report."""
        model, report = load_pretrained(_backend(cls), pretrained_model_name_or_path, **kwargs)
        return (model, report) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike,
                        max_shard_size: int | str = "5GB") -> os.PathLike:
        """Write config.json, generation_config.json, safetensors weights and the tokenizer
        files the model was loaded with (`encdec.core.tokenizer_files`) atomically."""
        return save_pretrained(save_directory, self.config, self.generation_config,
                               Dialect.KERAS, functools.partial(params.get, self),
                               max_shard_size=max_shard_size, dtype=params.dtype_of(self),
                               tokenizers=self.tokenizers)


def _build(cls: type[EncoderDecoderModel], config: EncoderDecoderConfig, dtype: str,
           encoder: keras.Model | None, decoder: keras.Model | None) -> EncoderDecoderModel:
    """The composite for a load: variables created in `dtype` (zeros, not initialised)."""
    with params.skip_init(), params.default_dtype(dtype):
        return cls(config=config, encoder=encoder, decoder=decoder)


def _cast(model: keras.Model, dtype: str) -> None:
    """Keras fixes a variable's dtype when it is created: a given backbone built in another
    dtype is an error naming both (build it in `dtype`, e.g. `from_pretrained(..., dtype=)`)."""
    held = {keras.backend.standardize_dtype(v.dtype) for v in params.variables(model).values()}
    if held - {dtype}:
        raise ValueError(f"the model holds {sorted(held)} weights and is loaded in {dtype}: a "
                         "Keras model keeps the dtype it was built in; build the given "
                         f"encoder_model / decoder_model in {dtype}")


def _backend(cls: type[EncoderDecoderModel]) -> Backend:
    """The hooks of `encdec.core.modeling.load_pretrained` and `encdec.core.warm_start`:
    `params.BACKEND`'s and the composite's own."""
    return dataclasses.replace(params.BACKEND, build=functools.partial(_build, cls), cast=_cast,
                               check_decoder=check_decoder)


TFEncoderDecoderModel = EncoderDecoderModel  # the reference's TF class name
