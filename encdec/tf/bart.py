"""The BART family's decoder in Keras 3 — BART, mBART, Marian, Pegasus: `BartDecoder` and
`BartForCausalLM`, following transformers' `modeling_{bart,mbart,marian,pegasus}`
(`*Decoder`, `*DecoderLayer`, `*ForCausalLM`): self-attention, cross-attention (always
present) and a feed-forward per layer, `lm_head` tied to `embed_tokens`.

What varies inside the family is the registry's `BartLayout`, never a model type: learned
positions (read at position + offset) or a fixed sinusoidal table under the same name
`embed_positions`, post-norm (BART, Marian) or pre-norm layers with a final `layer_norm`
(mBART, Pegasus), `layernorm_embedding`, and whether the embedding scale also applies to a
caller's `inputs_embeds`. Attribute names reproduce the reference's state-dict names
(`model.decoder.layers[i].encoder_attn.q_proj`, …); every sublayer has an explicit `name=`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from encdec.core.config import BartConfig, ModelConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    BART_ATTENTION,
    architecture,
    bart_decoder,
    causal_lm_config,
    check_length,
)
from encdec.core.weights import Table

from . import params
from .base import CausalLM
from .layers import (
    ACTIVATIONS,
    Attention,
    Block,
    Container,
    LMDecoder,
    Mask,
    Past,
    causal_mask,
    cross_entropy,
    dense,
    embed,
    layer_norm,
    padding_mask,
    split_past,
    step_masks,
)


class BartDecoderLayer(Block):
    """self_attn -> encoder_attn -> fc1/act/fc2, each with its residual and LayerNorm: after
    the residual (post-norm: BART, Marian) or before the sublayer (pre-norm: mBART, Pegasus)."""

    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        h, heads, eps = c.hidden_size, c.num_attention_heads, c.layer_norm_eps
        self.pre_norm = architecture(c).layout.pre_norm
        self.self_attn = Attention(h, heads, BART_ATTENTION, cross=False,
                                   dropout=c.attention_dropout, name="self_attn")
        self.self_attn_layer_norm = layer_norm(eps, "self_attn_layer_norm")
        self.encoder_attn = Attention(h, heads, BART_ATTENTION, cross=True,
                                      dropout=c.attention_dropout, name="encoder_attn")
        self.encoder_attn_layer_norm = layer_norm(eps, "encoder_attn_layer_norm")
        self.fc1 = dense(c.intermediate_size, "fc1")
        self.fc2 = dense(h, "fc2")
        self.final_layer_norm = layer_norm(eps, "final_layer_norm")
        self.act = ACTIVATIONS[c.activation]
        self.dropout = keras.layers.Dropout(c.dropout, name="dropout")
        self.activation_dropout = keras.layers.Dropout(c.activation_dropout,
                                                       name="activation_dropout")
        self.built = True  # sublayers create their variables on the first call

    def _residual(self, x: tf.Tensor, norm: keras.layers.Layer, sublayer,
                  training: bool = False) -> tuple[tf.Tensor, Any]:
        """x + dropout(sublayer(.)) with `norm` before (pre-norm) or after (post-norm);
        `sublayer` returns (output, extras) -> (x, extras)."""
        out, extras = sublayer(norm(x) if self.pre_norm else x)
        x = x + self.dropout(out, training=training)
        return (x if self.pre_norm else norm(x)), extras

    def _ffn(self, x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, None]:
        h = self.activation_dropout(self.act(self.fc1(x)), training=training)  # (B, T, I)
        return self.fc2(h), None

    def call(self, x: tf.Tensor, mask: Mask | None = None, states: tf.Tensor | None = None,
             cross_mask: Mask | None = None, past: Past | None = None,
             output_attentions: bool = False, training: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        x, (probs, kv) = self._residual(x, self.self_attn_layer_norm, lambda y: _split(
            self.self_attn(y, mask=mask, past=self_past,
                           output_attentions=output_attentions, training=training)), training)
        cross_probs, present = None, kv
        if states is not None:  # as the reference: a cross cache alone does not cross-attend
            x, (cross_probs, ckv) = self._residual(
                x, self.encoder_attn_layer_norm, lambda y: _split(self.encoder_attn(
                    y, mask=cross_mask, states=states, past=cross_past,
                    output_attentions=output_attentions, training=training)), training)
            present = kv + ckv
        x, _ = self._residual(x, self.final_layer_norm,
                              lambda y: self._ffn(y, training), training)
        return x, probs, cross_probs, present

    def step(self, x: tf.Tensor, cache: tuple[tf.Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache

        def self_attn(y):
            out, k, v = self.self_attn.step_self(y, k_buf, v_buf, cache_index, mask)
            return out, (k, v)

        x, (k_buf, v_buf) = self._residual(x, self.self_attn_layer_norm, self_attn)
        x, _ = self._residual(x, self.encoder_attn_layer_norm, lambda y: (
            self.encoder_attn.step_cross(y, ck, cv, cross_mask), None))
        x, _ = self._residual(x, self.final_layer_norm, self._ffn)
        return x, (k_buf, v_buf, ck, cv)


def _split(out: tuple) -> tuple[tf.Tensor, tuple]:
    """An `Attention` call's (out, probs, (k, v)) as (out, (probs, (k, v)))."""
    return out[0], (out[1], out[2])


class BartDecoder(keras.layers.Layer):
    """transformers' `BartDecoder` (and mBART's, Marian's, Pegasus's): token embeddings (scaled
    by `embed_scale`), positions, [layernorm_embedding], `layers`, [final `layer_norm`].

    A Keras layer, not a `keras.Model` (as the reference's `TFBartDecoder`): a Model reserves
    the attribute `layers`, which is the reference's name for the decoder layers."""

    config_class = BartConfig

    def __init__(self, config: ModelConfig, *, name: str = "decoder", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        layout = architecture(config).layout
        self.layout = layout
        h = config.hidden_size
        with params.constructing() as c:
            self.embed_tokens = embed(config.lm_vocab_size, h, "embed_tokens")
            self.embed_positions = embed(config.max_position_embeddings
                                         + layout.position_offset, h, "embed_positions")
            if layout.sinusoid is not None:  # a fixed table, as the reference's (no gradient)
                self.embed_positions.trainable = False
            self.layernorm_embedding = layer_norm(config.layer_norm_eps, "layernorm_embedding") \
                if layout.layernorm_embedding else None
            self.layers = [BartDecoderLayer(config, name=f"layers_{i}")
                           for i in range(config.num_hidden_layers)]
            self.layer_norm = layer_norm(config.layer_norm_eps, "layer_norm") \
                if layout.final_norm else None
            self.dropout = keras.layers.Dropout(config.dropout, name="dropout")
            self.layerdrop_seed = keras.random.SeedGenerator(name="layerdrop_seed")
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> Table:
        return bart_decoder(self.config, architecture(self.config))

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.embed_tokens

    def embed(self, input_ids: tf.Tensor | None, position_ids: tf.Tensor | None,
              inputs_embeds: tf.Tensor | None, past: int | tf.Tensor) -> tf.Tensor:
        """Embeddings (B, T, H): tokens * embed_scale (a caller's `inputs_embeds` scaled only
        when the layout says so), + positions (past + arange(T) by default, read at + offset),
        [layernorm_embedding], dropout (following the `training` of the enclosing Keras
        call)."""
        scale = self.config.embed_scale
        if inputs_embeds is None:
            x = self.embed_tokens(input_ids) * scale  # (B, T, H)
        else:
            x = inputs_embeds * scale if self.layout.scale_inputs_embeds else inputs_embeds
        if position_ids is None:  # past + arange(T), regardless of padding (as the reference)
            position_ids = (tf.range(tf.shape(x)[1]) + tf.cast(past, tf.int32))[None]
        x = x + self.embed_positions(position_ids + self.layout.position_offset)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
             use_cache=None, output_attentions=False, output_hidden_states=False,
             return_dict=True, training=False):
        """As the reference's decoder forward (causal; arguments in the order of every encdec
        backbone, no token types); legacy-tuple `past_key_values`. In training,
        `decoder_layerdrop` skips each layer with that probability (a traced draw: the layer
        runs and its output is discarded, so the same code serves eager and XLA)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = bool(c.use_cache if use_cache is None else use_cache)
        ref = input_ids if input_ids is not None else inputs_embeds
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past is None:  # a dynamic cache length: the positions follow the tensor
            past = tf.shape(past_key_values[0][0])[2]
        elif ref.shape[1] is not None:  # static: checked before any gather
            check_length(c, "input_ids" if input_ids is not None else "inputs_embeds",
                         ref.shape[1], past)
        x = self.embed(input_ids, position_ids, inputs_embeds, past)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        mask = causal_mask(b, t, past, past + t, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        layerdrop = c.decoder_layerdrop if training else 0.0
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.layers):
            hidden.append(x)
            y, p, cp, present = layer(x, mask=mask, states=encoder_hidden_states,
                                      cross_mask=cross_mask,
                                      past=None if past_key_values is None else past_key_values[i],
                                      output_attentions=output_attentions, training=training)
            if layerdrop > 0.0:  # LayerDrop: this layer's output discarded with that probability
                y = tf.where(keras.random.uniform((), seed=self.layerdrop_seed) < layerdrop, x, y)
            x = y
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        hidden.append(x)  # as the reference: the last hidden state is after the final norm
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns)
            if output_attentions and encoder_hidden_states is not None else None)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, encoder_hidden_states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.encoder_attn.project_kv(encoder_hidden_states)
                     for layer in self.layers)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
             encoder_attention_mask: tf.Tensor | None,
             decoder_attention_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)
        -> (hidden (B, T, H), new cache)."""
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoding cache (max_length)", max_len)  # a traced index
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", input_ids.shape[1], cache_index)
        x = self.embed(input_ids, None, None, cache_index)  # (B, T, H)
        mask, cross_mask = step_masks(tf.shape(x)[0], tf.shape(x)[1], cache_index, max_len,
                                      x.dtype, decoder_attention_mask, encoder_attention_mask)
        new = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, tuple(new)


class BartForCausalLM(CausalLM):
    """transformers' `{Bart,MBart,Marian,Pegasus}ForCausalLM`: `model.decoder` (the
    `BartDecoder`) + `lm_head` (no bias), whose weight is `embed_tokens`' matrix when the table
    ties it (then it holds no variable of its own)."""

    config_class = BartConfig

    def __init__(self, config: ModelConfig, *, name: str = "bart_for_causal_lm", **kwargs):
        super().__init__(name=name, **kwargs)
        causal_lm_config(config)  # as the reference's __init__: a causal decoder
        self.config = config
        tied = self.table().by_name["lm_head.weight"].tied_to is not None
        with params.constructing() as c:
            self.model = Container(name="model")
            self.model.decoder = BartDecoder(config, name="decoder")
            self.lm_head = None if tied else dense(config.lm_vocab_size, "lm_head",
                                                   use_bias=False)
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> BartDecoder:
        return self.model.decoder

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(B, T, H) -> (B, T, V)."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return LMDecoder.tied_logits(hidden, self.get_input_embeddings().embeddings)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, labels=None,
             past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference; `labels` give the mean cross-entropy of logits[t] against
        labels[t] (ignoring -100): the reference's BART-family causal LMs do not shift."""
        out = self.model.decoder(input_ids, attention_mask, position_ids, inputs_embeds,
                                 encoder_hidden_states, encoder_attention_mask, past_key_values,
                                 use_cache=use_cache, output_attentions=output_attentions,
                                 output_hidden_states=output_hidden_states, training=training)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else cross_entropy(logits, labels)
        out = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                             hidden_states=out.hidden_states, attentions=out.attentions,
                             cross_attentions=out.cross_attentions)
        return out if return_dict else out.to_tuple()
