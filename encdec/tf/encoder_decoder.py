"""`EncoderDecoderModel` in Keras 3: transformers' `EncoderDecoderModel` (encoder + causal
decoder with cross-attention, `enc_to_dec_proj` when hidden sizes differ, labels shifted into
decoder inputs, mean cross-entropy ignoring -100), its load/save class methods through
`encdec.core.modeling`, `model.fit` with the model's own loss, and the static-cache decoding
contract (`init_cache`, `decode_step`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from encdec.core import seq2seq, weights
from encdec.core.config import EncoderDecoderConfig, GenerationConfig, ModelConfig
from encdec.core.modeling import (
    load_weights,
    prepare_warm_start,
    read_pretrained,
    save_pretrained,
    warm_start_weights,
)
from encdec.core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec.core.registry import architecture, check_length
from encdec.core.weights import Dialect

from . import params
from .attention import cross_entropy, dense
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model

# the registry's family -> (base model class, causal LM class or None); the only class list
FAMILIES: dict[str, tuple[type[keras.Model], type[keras.Model] | None]] = {
    "bert": (BertModel, BertLMHeadModel),
    "distilbert": (DistilBertModel, None),
    "gpt2": (GPT2Model, GPT2LMHeadModel),
}


def encoder_class(config: ModelConfig) -> type[keras.Model]:
    """The base model class serving `config` as an encoder (by its registry family)."""
    return FAMILIES[architecture(config).family][0]


def decoder_class(config: ModelConfig) -> type[keras.Model]:
    """The causal LM class serving `config` as a decoder; the registry's clear error for an
    encoder-only architecture."""
    arch = architecture(config)
    arch.decoder_table(config)  # raises when the reference has no causal LM for it
    return FAMILIES[arch.family][1]

# per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v)
Cache = tuple[tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], ...]


class EncoderDecoderModel(keras.Model):
    """An encoder and a cross-attending decoder, numerically identical to the reference."""

    def __init__(self, config: EncoderDecoderConfig | None = None, *,
                 encoder: keras.Model | None = None, decoder: keras.Model | None = None,
                 name: str = "encoder_decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        if config is None:
            if encoder is None or decoder is None:
                raise ValueError("Either a configuration or an encoder and a decoder has to be "
                                 "provided.")
            dc = decoder.config
            if not (dc.is_decoder and dc.add_cross_attention):
                raise ValueError(f"decoder {type(decoder).__name__}: its config needs "
                                 "is_decoder=True and add_cross_attention=True (it has no "
                                 "cross-attention layers to attend to the encoder)")
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, dc)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ValueError("config: expected an EncoderDecoderConfig, got "
                             f"{type(config).__name__}")
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
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
        return weights.encoder_decoder_table(self.config)

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
             output_attentions=False, output_hidden_states=False, return_dict=True,
             training=False) -> Seq2SeqLMOutput | tuple:
        """As the reference's forward; `past_key_values` in its legacy per-layer tuple format
        `(self_k, self_v, cross_k, cross_v)`. A dict as first argument (what `model.fit` passes
        from a dataset of dicts) is unpacked into the keyword arguments."""
        if isinstance(input_ids, Mapping):
            return self.call(**input_ids, training=training)
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds,
                                           output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states,
                                           training=training)
        elif isinstance(encoder_outputs, (tuple, list)):  # the reference's BaseModelOutput(*tuple)
            names = ("last_hidden_state", "hidden_states", "attentions")
            encoder_outputs = BaseModelOutput(**dict(zip(names, encoder_outputs, strict=False)))
        states = self._project(encoder_outputs["last_hidden_state"])

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = tf.cast(decoder_input_ids != self.config.pad_token_id,
                                                 decoder_input_ids.dtype)

        dec_in = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
        if dec_in is not None and dec_in.shape[1] is not None and (
                past_key_values is None or past_key_values[0][0].shape[2] is not None):
            # named as the caller knows it (the decoder checks it again)
            check_length(self.config.decoder, "decoder_input_ids" if decoder_input_ids is not None
                         else "decoder_inputs_embeds", dec_in.shape[1],
                         0 if past_key_values is None else past_key_values[0][0].shape[2])
        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=states,
                           encoder_attention_mask=attention_mask, past_key_values=past_key_values,
                           use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training)
        loss = None if labels is None else cross_entropy(dec.logits, labels)  # (B, T, V), (B, T)
        out = Seq2SeqLMOutput(
            loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs["last_hidden_state"],
            encoder_hidden_states=encoder_outputs.get("hidden_states"),
            encoder_attentions=encoder_outputs.get("attentions"))
        return out.to_tuple() if return_dict is False else out

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
        from .generation import generate  # generation lives apart from the model

        return generate(self, input_ids, attention_mask, **kwargs)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
            cls, encoder_pretrained_model_name_or_path: str | os.PathLike,
            decoder_pretrained_model_name_or_path: str | os.PathLike, *,
            output_loading_info: bool = False, **kwargs: Any):
        """Warm-start from two single-model checkpoints (`encoder_*` / `decoder_*` kwargs go to
        that side's config). Weights a checkpoint lacks keep their random init and are
        reported (with `output_loading_info`, also returned as {"encoder": …, "decoder": …})."""
        config, enc_dir, dec_dir = prepare_warm_start(
            encoder_pretrained_model_name_or_path, decoder_pretrained_model_name_or_path, **kwargs)
        with params.skip_init():
            model = cls(config=config)
        reports = warm_start_weights(config, enc_dir, dec_dir, Dialect.KERAS,
                                     functools.partial(params.assign, model))
        for side in ("encoder", "decoder"):
            sub = getattr(model, side)
            params.init_params(sub, sub.table(), sub.config, reports[side].missing)
        model._init_proj()
        model.tie_weights()
        return (model, reports) if output_loading_info else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        **config_overrides: Any) -> EncoderDecoderModel:
        """Load a composite checkpoint in the one encdec format (the reference's PyTorch names;
        strict: every weight must be there)."""
        pre = read_pretrained(pretrained_model_name_or_path, **config_overrides)
        with params.skip_init():  # strict: every weight is overwritten below
            model = cls(config=pre.config)
        model.generation_config = pre.generation_config
        load_weights(model.table(), pre.directory, Dialect.KERAS,
                     functools.partial(params.assign, model), strict=True)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike,
                        max_shard_size: int | str = "5GB") -> os.PathLike:
        """Write config.json, generation_config.json and safetensors weights atomically."""
        return save_pretrained(save_directory, self.config, self.generation_config,
                               Dialect.KERAS, functools.partial(params.get, self),
                               max_shard_size=max_shard_size)


TFEncoderDecoderModel = EncoderDecoderModel  # the reference's TF class name
