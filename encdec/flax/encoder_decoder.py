"""`EncoderDecoderModel` in Flax NNX: transformers' `EncoderDecoderModel` (encoder + causal
decoder with cross-attention, `enc_to_dec_proj` when hidden sizes differ, labels shifted into
decoder inputs, mean cross-entropy ignoring -100 — a loss the reference's Flax class lacks),
its load/save class methods through `encdec.core.modeling`, and the static-cache decoding
contract (`init_cache`, `decode_step`), traceable under `jax.jit` / `nnx.jit`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
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
from encdec.core.seq2seq import IGNORE_INDEX, shift_token_ids
from encdec.core.weights import Dialect

from . import params
from .attention import cross_entropy, default_rngs, dense
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model

# family (`encdec.core.registry.Architecture.family`) -> (base model, causal LM or None)
FAMILIES: dict[str, tuple[type[nnx.Module], type[nnx.Module] | None]] = {
    "bert": (BertModel, BertLMHeadModel),
    "distilbert": (DistilBertModel, None),
    "gpt2": (GPT2Model, GPT2LMHeadModel),
}


def encoder_class(config: ModelConfig) -> type[nnx.Module]:
    """The class that serves `config` as the encoder."""
    return FAMILIES[architecture(config).family][0]


def decoder_class(config: ModelConfig) -> type[nnx.Module]:
    """The class that serves `config` as the decoder; the registry's clear error when its
    architecture has no causal LM."""
    architecture(config).decoder_table(config)  # raises for an encoder-only architecture
    return FAMILIES[architecture(config).family][1]

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
            dc = decoder.config
            if not (dc.is_decoder and dc.add_cross_attention):
                raise ValueError(f"decoder {type(decoder).__name__}: its config needs "
                                 "is_decoder=True and add_cross_attention=True (it has no "
                                 "cross-attention layers to attend to the encoder)")
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, dc)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ValueError("config: expected an EncoderDecoderConfig, got "
                             f"{type(config).__name__}")
        rngs = default_rngs(rngs)
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
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
        return weights.encoder_decoder_table(self.config)

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
                 return_dict: bool | None = None) -> Seq2SeqLMOutput | tuple:
        """As the reference's forward; `past_key_values` in its legacy per-layer tuple format
        `(self_k, self_v, cross_k, cross_v)`."""
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds,
                                           output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states)
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
                           use_cache=use_cache, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states)
        loss = None if labels is None else cross_entropy(dec.logits, labels)  # (B, T, V) vs (B, T)
        out = Seq2SeqLMOutput(
            loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs["last_hidden_state"],
            encoder_hidden_states=encoder_outputs.get("hidden_states"),
            encoder_attentions=encoder_outputs.get("attentions"))
        return out.to_tuple() if return_dict is False else out

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
        from .generation import generate  # generation lives apart from the model

        return generate(self, input_ids, attention_mask, **kwargs)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
            cls, encoder_pretrained_model_name_or_path: str | os.PathLike,
            decoder_pretrained_model_name_or_path: str | os.PathLike, *,
            rngs: nnx.Rngs | None = None, output_loading_info: bool = False, **kwargs: Any):
        """Warm-start from two single-model checkpoints (`encoder_*` / `decoder_*` kwargs go to
        that side's config). Weights a checkpoint lacks keep their random init and are reported;
        the model is returned in eval mode (with `{"encoder": report, "decoder": report}`)."""
        config, enc_dir, dec_dir = prepare_warm_start(
            encoder_pretrained_model_name_or_path, decoder_pretrained_model_name_or_path, **kwargs)
        model = cls(config=config, rngs=rngs)
        reports = warm_start_weights(config, enc_dir, dec_dir, Dialect.NNX,
                                     functools.partial(params.assign, model))
        model.eval()
        return (model, reports) if output_loading_info else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        rngs: nnx.Rngs | None = None,
                        **config_overrides: Any) -> EncoderDecoderModel:
        """Load a composite checkpoint (strict: every weight must be there), in eval mode.
        Weights are allocated once, from the checkpoint: there is no random init to discard."""
        pre = read_pretrained(pretrained_model_name_or_path, **config_overrides)
        model = params.abstract(lambda: cls(config=pre.config), rngs)  # no random init
        model.generation_config = pre.generation_config
        load_weights(model.table(), pre.directory, Dialect.NNX,
                     functools.partial(params.assign, model), strict=True)
        params.check_assigned(model)
        model.eval()
        return model

    def save_pretrained(self, save_directory: str | os.PathLike,
                        max_shard_size: int | str = "5GB") -> os.PathLike:
        """Write config.json, generation_config.json and safetensors weights atomically."""
        return save_pretrained(save_directory, self.config, self.generation_config, Dialect.NNX,
                               functools.partial(params.get, self), max_shard_size=max_shard_size)


FlaxEncoderDecoderModel = EncoderDecoderModel
