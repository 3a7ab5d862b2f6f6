"""BERT in Keras 3: `BertModel` (encoder, or causal decoder with cross-attention) and
`BertLMHeadModel`, following transformers' `modeling_bert` (post-LayerNorm blocks, exact-erf
GELU, absolute positions, LM head tied to the word embeddings).

Attribute names reproduce the reference's state-dict names (`embeddings.word_embeddings`,
`encoder.layer[i].attention.self.query`, `cls.predictions.transform.dense`, …); every sublayer
has an explicit `name=`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from encdec.core.config import BertConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.weights import Table, bert_lm_head_model, bert_model

from . import params
from .attention import (
    ACTIVATIONS,
    Attention,
    Mask,
    causal_lm_loss,
    causal_mask,
    dense,
    normal,
    padding_mask,
)


def _layer_norm(c: BertConfig, name: str = "LayerNorm") -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=c.layer_norm_eps, name=name)


class BertEmbeddings(keras.layers.Layer):
    """word + token_type + position embeddings, LayerNorm, dropout."""

    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        init = normal(c.initializer_range)
        self.word_embeddings = keras.layers.Embedding(c.vocab_size, c.hidden_size,
                                                      embeddings_initializer=init,
                                                      name="word_embeddings")
        self.position_embeddings = keras.layers.Embedding(
            c.max_position_embeddings, c.hidden_size, embeddings_initializer=init,
            name="position_embeddings")
        self.token_type_embeddings = keras.layers.Embedding(
            c.type_vocab_size, c.hidden_size, embeddings_initializer=init,
            name="token_type_embeddings")
        self.LayerNorm = _layer_norm(c)
        self.dropout = keras.layers.Dropout(c.hidden_dropout_prob, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             past_length: int | tf.Tensor = 0, training: bool = False) -> tf.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, T, H)
        t = tf.shape(inputs_embeds)[1]
        if position_ids is None:
            position_ids = (tf.range(t) + tf.cast(past_length, tf.int32))[None]  # (1, T)
        if token_type_ids is None:
            token_type_ids = tf.zeros_like(position_ids)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), training=training)


class BertSelfOutput(keras.layers.Layer):
    """dense -> dropout -> LayerNorm(x + residual)."""

    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.hidden_size, "dense", c.initializer_range)
        self.LayerNorm = _layer_norm(c)
        self.dropout = keras.layers.Dropout(c.hidden_dropout_prob, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, residual: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x), training=training) + residual)


BertOutput = BertSelfOutput  # the FFN's output block has the same shape of code


class BertAttention(keras.layers.Layer):
    """`self` (the attention proper) + `output` (projection, residual, LayerNorm)."""

    output = None  # shadows keras.Layer.output (a read-only property) for the reference's name

    def __init__(self, c: BertConfig, *, cross: bool, **kwargs):
        super().__init__(**kwargs)
        self.self = Attention(c.hidden_size, c.num_attention_heads, gpt2=False, cross=cross,
                              dropout=c.attention_probs_dropout_prob, std=c.initializer_range,
                              name="self")
        self.output = BertSelfOutput(c, name="output")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, attn_mask: Mask | None = None, *, states=None, past=None,
             output_attentions: bool = False, training: bool = False):
        out, probs, kv = self.self(x, attn_mask, states=states, past=past,
                                   output_attentions=output_attentions, training=training)
        return self.output(out, x, training=training), probs, kv


class BertIntermediate(keras.layers.Layer):
    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.intermediate_size, "dense", c.initializer_range)
        self.act = ACTIVATIONS[c.hidden_act]
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.act(self.dense(x))


class BertLayer(keras.layers.Layer):
    """Self-attention [-> cross-attention] -> feed-forward, each post-LayerNorm."""

    output = None  # see BertAttention

    def __init__(self, c: BertConfig, shared: BertLayer | None = None, **kwargs):
        super().__init__(**kwargs)
        if shared is not None:  # tie_encoder_decoder: the encoder layer's sublayers
            self.attention, self.intermediate = shared.attention, shared.intermediate
            self.output = shared.output
        else:
            self.attention = BertAttention(c, cross=False, name="attention")
            self.intermediate = BertIntermediate(c, name="intermediate")
            self.output = BertOutput(c, name="output")
        if c.add_cross_attention:
            self.crossattention = BertAttention(c, cross=True, name="crossattention")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, attn_mask: Mask | None = None, *, states=None,
             cross_mask: Mask | None = None, past: tuple | None = None,
             output_attentions: bool = False, training: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, cross_k, cross_v]))."""
        x, probs, kv = self.attention(x, attn_mask, past=None if past is None else past[:2],
                                      output_attentions=output_attentions, training=training)
        cross_probs = None
        if states is not None or (past is not None and len(past) == 4):
            x, cross_probs, ckv = self.crossattention(
                x, cross_mask, states=states, past=None if past is None else past[2:],
                output_attentions=output_attentions, training=training)
            kv = kv + ckv
        x = self.output(self.intermediate(x), x, training=training)
        return x, probs, cross_probs, kv

    def cross_kv(self, states: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Cross-attention keys/values (Be, h, S, d), computed once per generation."""
        return self.crossattention.self.project_kv(states)

    def step(self, x: tf.Tensor, cache: tuple, cache_index, attn_mask: Mask,
             cross_mask: Mask | None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding: cache = (self_k_buf, self_v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attention.self.step_self(x, k_buf, v_buf, cache_index, attn_mask)
        x = self.attention.output(a, x)
        a = self.crossattention.self.step_cross(x, ck, cv, cross_mask)
        x = self.crossattention.output(a, x)
        x = self.output(self.intermediate(x), x)
        return x, (k_buf, v_buf, ck, cv)


class BertEncoder(keras.layers.Layer):
    """The stack of `BertLayer`s (`layer[i]`), with hidden-state / attention collection."""

    def __init__(self, c: BertConfig, shared: BertEncoder | None = None, **kwargs):
        super().__init__(**kwargs)
        tied = [] if shared is None else shared.layer
        self.layer = [BertLayer(c, tied[i] if i < len(tied) else None, name=f"layer_{i}")
                      for i in range(c.num_hidden_layers)]
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, attn_mask: Mask | None = None, *, states=None,
             cross_mask: Mask | None = None, past_key_values=None, use_cache: bool = False,
             output_attentions: bool = False, output_hidden_states: bool = False,
             training: bool = False) -> dict[str, Any]:
        hidden, attns, crosses, presents = [x], [], [], []
        for i, layer in enumerate(self.layer):
            x, probs, cross_probs, kv = layer(
                x, attn_mask, states=states, cross_mask=cross_mask,
                past=None if past_key_values is None else past_key_values[i],
                output_attentions=output_attentions, training=training)
            hidden.append(x)
            attns.append(probs)
            crosses.append(cross_probs)
            presents.append(kv)
        return dict(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(crosses) if output_attentions and crosses[0] is not None
            else None)


class BertPooler(keras.layers.Layer):
    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.hidden_size, "dense", c.initializer_range)
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tanh(self.dense(x[:, 0]))  # (B, H) from the first token


class BertPredictionHeadTransform(keras.layers.Layer):
    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.hidden_size, "dense", c.initializer_range)
        self.act = ACTIVATIONS[c.hidden_act]
        self.LayerNorm = _layer_norm(c)
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(keras.layers.Layer):
    """transform -> vocabulary projection (the word embeddings when tied) + `bias`."""

    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.transform = BertPredictionHeadTransform(c, name="transform")
        self.bias = self.add_weight(shape=(c.vocab_size,), initializer="zeros", name="bias")
        if not c.tie_word_embeddings:  # as the reference: then `decoder.bias` is used, not `bias`
            self.decoder = dense(c.vocab_size, "decoder", c.initializer_range)
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, word_embeddings: tf.Tensor) -> tf.Tensor:
        x = self.transform(x)  # (B, T, H)
        if hasattr(self, "decoder"):
            return self.decoder(x)
        return tf.einsum("bth,vh->btv", x, word_embeddings) + self.bias  # (B, T, V)


class BertOnlyMLMHead(keras.layers.Layer):
    def __init__(self, c: BertConfig, **kwargs):
        super().__init__(**kwargs)
        self.predictions = BertLMPredictionHead(c, name="predictions")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, word_embeddings: tf.Tensor) -> tf.Tensor:
        return self.predictions(x, word_embeddings)


class BertModel(keras.Model):
    """transformers' `BertModel`: an encoder, or (is_decoder) a causal decoder that
    cross-attends to `encoder_hidden_states` when `add_cross_attention`."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, *,
                 shared: BertModel | None = None, name: str = "bert", **kwargs):
        """`shared`: an encoder `BertModel` whose embeddings and layer sublayers this model
        reuses (the reference's `tie_encoder_decoder`)."""
        super().__init__(name=name, **kwargs)
        self.config = config
        self.embeddings = shared.embeddings if shared is not None \
            else BertEmbeddings(config, name="embeddings")
        self.encoder = BertEncoder(config, None if shared is None else shared.encoder,
                                   name="encoder")
        if add_pooling_layer:
            self.pooler = BertPooler(config, name="pooler")
        self.built = True  # sublayers create their variables on the first call
        params.build(self, config)

    def table(self) -> Table:
        return bert_model(self.config, pooler=hasattr(self, "pooler"))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """A BERT checkpoint (with or without the `bert.` prefix; heads dropped and reported)."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any):
        return params.save_backbone(self, directory, **kwargs)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        c = self.config
        use_cache = bool(c.use_cache if use_cache is None else use_cache) and c.is_decoder
        past = 0 if past_key_values is None else tf.shape(past_key_values[0][0])[2]
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds,
                            past_length=past, training=training)  # (B, T, H)
        t = tf.shape(x)[1]
        if c.is_decoder:  # causal, and-ed with the padding of past + current keys
            attn_mask = causal_mask(t, past, past + t, x.dtype, attention_mask)
        else:
            attn_mask = padding_mask(attention_mask, x.dtype)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype)
        out = self.encoder(x, attn_mask, states=encoder_hidden_states, cross_mask=cross_mask,
                           past_key_values=past_key_values, use_cache=use_cache,
                           output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, training=training)
        pooled = self.pooler(out["last_hidden_state"]) if hasattr(self, "pooler") else None
        out = BaseModelOutput(pooler_output=pooled, **out)
        return out if return_dict else out.to_tuple()

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index, encoder_attention_mask=None,
             attention_mask=None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding through every layer: -> (hidden (B, T, H), new cache)."""
        x = self.embeddings(input_ids, past_length=cache_index)  # positions cache_index + t
        max_len = tf.shape(cache[0][0])[2]
        attn_mask = causal_mask(tf.shape(x)[1], cache_index, max_len, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype)
        new = []
        for layer, entry in zip(self.encoder.layer, cache, strict=True):
            x, entry = layer.step(x, entry, cache_index, attn_mask, cross_mask)
            new.append(entry)
        return x, tuple(new)


class BertLMHeadModel(keras.Model):
    """transformers' `BertLMHeadModel`: `bert` (no pooler) + `cls` (tied to the embeddings)."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, *, shared: BertModel | None = None,
                 name: str = "bert_lm_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False, shared=shared, name="bert")
        self.cls = BertOnlyMLMHead(config, name="cls")
        self.built = True  # sublayers create their variables on the first call
        params.build(self, config)

    def table(self) -> Table:
        return bert_lm_head_model(self.config)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """A BERT checkpoint; weights it lacks (cross-attention, head) are initialised, reported."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any):
        return params.save_backbone(self, directory, **kwargs)

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(B, T, H) -> (B, T, V)."""
        return self.cls(hidden, self.bert.embeddings.word_embeddings.embeddings)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             labels=None, past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        if labels is not None:
            use_cache = False
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, past_key_values,
                        use_cache=use_cache, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states, training=training)
        logits = self.logits(out.last_hidden_state)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        out = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                             hidden_states=out.hidden_states, attentions=out.attentions,
                             cross_attentions=out.cross_attentions)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Per layer, cross-attention (k, v) (Be, h, S, d) of the encoder states."""
        return tuple(layer.cross_kv(states) for layer in self.bert.encoder.layer)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
                    encoder_attention_mask=None, attention_mask=None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding: input_ids (B, T) -> (logits (B, T, V), new cache)."""
        x, cache = self.bert.step(input_ids, cache, cache_index, encoder_attention_mask,
                                  attention_mask)
        return self.logits(x), cache
