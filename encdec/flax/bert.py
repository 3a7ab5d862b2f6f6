"""BERT in Flax NNX: `BertModel` (encoder, or causal decoder with cross-attention) and
`BertLMHeadModel`, following transformers' `modeling_bert.py` (post-LayerNorm blocks, exact
erf GELU, absolute positions offset by the cache length, token type 0 by default).

Attribute names reproduce the reference's state-dict names (`encoder.layer.0.attention.self.query`),
so NNX state paths are `encoder.layer.0.attention.self.query.kernel`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
from encdec.core.config import BertConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput

from . import params
from .attention import (
    ACTIVATIONS,
    PRECISION,
    Attention,
    Mask,
    causal_lm_loss,
    causal_mask,
    default_rngs,
    dense,
    embed,
    layer_norm,
    padding_mask,
)

Past = tuple[jax.Array, ...]  # (self_k, self_v[, cross_k, cross_v]), each (B, h, T, d)


class BertEmbeddings(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        std, h = c.initializer_range, c.hidden_size
        self.word_embeddings = embed(c.vocab_size, h, std, rngs=rngs)
        if c.pad_token_id is not None and 0 <= c.pad_token_id < c.vocab_size:  # reference init
            table = self.word_embeddings.embedding
            table.set_value(table[...].at[c.pad_token_id].set(0.0))
        self.position_embeddings = embed(c.max_position_embeddings, h, std, rngs=rngs)
        self.token_type_embeddings = embed(c.type_vocab_size, h, std, rngs=rngs)
        self.LayerNorm = layer_norm(h, c.layer_norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob, rngs=rngs)

    def __call__(self, input_ids: jax.Array | None, token_type_ids: jax.Array | None,
                 position_ids: jax.Array, inputs_embeds: jax.Array | None) -> jax.Array:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(x.shape[:2], jnp.int32)
        x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertOutput(nnx.Module):
    """dense -> dropout -> LayerNorm(+ residual): `attention.output` and the FFN's `output`."""

    def __init__(self, c: BertConfig, n_in: int, *, rngs: nnx.Rngs):
        self.dense = dense(n_in, c.hidden_size, c.initializer_range, rngs=rngs)
        self.LayerNorm = layer_norm(c.hidden_size, c.layer_norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nnx.Module):
    """`attention` / `crossattention`: `self` (the `Attention`) + `output` (dense, LayerNorm)."""

    def __init__(self, c: BertConfig, cross: bool, *, rngs: nnx.Rngs):
        self.self = Attention(c.hidden_size, c.num_attention_heads, gpt2=False, cross=cross,
                              dropout=c.attention_probs_dropout_prob, std=c.initializer_range,
                              rngs=rngs)
        self.output = BertOutput(c, c.hidden_size, rngs=rngs)


class BertIntermediate(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.intermediate_size, c.initializer_range, rngs=rngs)
        self.act = ACTIVATIONS[c.hidden_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(c, cross=False, rngs=rngs)
        if c.add_cross_attention:
            self.crossattention = BertAttention(c, cross=True, rngs=rngs)
        self.intermediate = BertIntermediate(c, rngs=rngs)
        self.output = BertOutput(c, c.intermediate_size, rngs=rngs)

    def __call__(self, x: jax.Array, mask: Mask | None, states: jax.Array | None,
                 cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        a, probs, kv = self.attention.self(x, mask, past=None if past is None else past[:2],
                                           output_attentions=output_attentions)
        x = self.attention.output(a, x)
        cross_probs, present = None, kv
        if states is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states given, but this BERT has no "
                                 "cross-attention: set config.add_cross_attention=True")
            cross_past = past[2:] if past is not None and len(past) == 4 else None
            a, cross_probs, ckv = self.crossattention.self(
                x, cross_mask, states=states, past=cross_past, output_attentions=output_attentions)
            x = self.crossattention.output(a, x)
            present = kv + ckv
        x = self.output(self.intermediate(x), x)
        return x, probs, cross_probs, present

    def step(self, x: jax.Array, cache: tuple[jax.Array, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attention.self.step_self(x, k_buf, v_buf, cache_index, mask)
        x = self.attention.output(a, x)
        a = self.crossattention.self.step_cross(x, ck, cv, cross_mask)
        x = self.crossattention.output(a, x)
        return self.output(self.intermediate(x), x), (k_buf, v_buf, ck, cv)


class BertEncoder(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])


class BertPooler(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.hidden_size, c.initializer_range, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(x[:, 0]))  # first token


class BertModel(nnx.Module):
    """transformers' `BertModel`: bidirectional encoder, or (`config.is_decoder`) a causal decoder
    with cross-attention when `config.add_cross_attention`. Built in inference mode."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, *,
                 rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        self.config = config
        self.add_pooling_layer = add_pooling_layer
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.encoder = BertEncoder(config, rngs=rngs)
        self.pooler = BertPooler(config, rngs=rngs) if add_pooling_layer else None
        self.eval()

    def table(self) -> weights.Table:
        return weights.bert_model(self.config, pooler=self.add_pooling_layer)

    def get_input_embeddings(self) -> nnx.Embed:
        return self.embeddings.word_embeddings

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None,
                 inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `BertModel.forward`; `past_key_values` in the legacy tuple format."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = (c.use_cache if use_cache is None else use_cache) and c.is_decoder
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if position_ids is None:
            position_ids = (jnp.arange(T) + past_len)[None]  # (1, T)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, H)
        dtype = x.dtype
        if c.is_decoder:
            mask = causal_mask(B, T, past_len, past_len + T, dtype, attention_mask)
        else:
            mask = padding_mask(attention_mask, dtype)
        cross_mask = padding_mask(encoder_attention_mask, dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.encoder.layer):
            hidden.append(x)
            past = None if past_key_values is None else past_key_values[i]
            x, p, cp, present = layer(x, mask, encoder_hidden_states, cross_mask, past,
                                      output_attentions)
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        hidden.append(x)
        out = BaseModelOutput(
            last_hidden_state=x,
            pooler_output=self.pooler(x) if self.pooler is not None else None,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns)
            if output_attentions and encoder_hidden_states is not None else None)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, encoder_hidden_states: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.crossattention.self.project_kv(encoder_hidden_states)
                     for layer in self.encoder.layer)

    def step(self, input_ids: jax.Array, cache: tuple, cache_index,
             encoder_attention_mask: jax.Array | None,
             decoder_attention_mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        position_ids = (jnp.arange(T) + cache_index)[None]  # (1, T)
        x = self.embeddings(input_ids, None, position_ids, None)  # (B, T, H)
        mask = causal_mask(B, T, cache_index, max_len, x.dtype, decoder_attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype)
        new = []
        for layer, layer_cache in zip(self.encoder.layer, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return x, tuple(new)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """Load a single-model checkpoint (non-strict: missing weights are initialised and
        reported)."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int | str = "5GB"):
        return params.save_backbone(self, directory, max_shard_size)


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.hidden_size, c.initializer_range, rngs=rngs)
        self.act = ACTIVATIONS[c.hidden_act]
        self.LayerNorm = layer_norm(c.hidden_size, c.layer_norm_eps, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
    """`transform` then the vocabulary projection: the word-embedding matrix when tied (the
    reference's `decoder.weight` is that very tensor), else an own `decoder`; plus `bias`."""

    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.transform = BertPredictionHeadTransform(c, rngs=rngs)
        self.decoder = None if c.tie_word_embeddings else \
            dense(c.hidden_size, c.vocab_size, c.initializer_range, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((c.vocab_size,)))  # also the reference's `decoder.bias`

    def __call__(self, x: jax.Array, word_embeddings: nnx.Embed) -> jax.Array:
        x = self.transform(x)  # (B, T, H)
        if self.decoder is not None:  # untied, as the reference: `decoder.bias`, not `bias`
            return self.decoder(x)  # (B, T, V)
        logits = jnp.einsum("bth,vh->btv", x, word_embeddings.embedding[...], precision=PRECISION)
        return logits + self.bias[...]  # (B, T, V)


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(c, rngs=rngs)


class BertLMHeadModel(nnx.Module):
    """transformers' `BertLMHeadModel`: `bert` (no pooler) + `cls.predictions`, whose decoder
    weight is the word embedding matrix when `tie_word_embeddings`. Built in inference mode."""

    config_class = BertConfig

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False, rngs=rngs)
        self.cls = BertOnlyMLMHead(config, rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return weights.bert_lm_head_model(self.config)

    @property
    def base_model(self) -> BertModel:
        return self.bert

    def get_input_embeddings(self) -> nnx.Embed:
        return self.bert.embeddings.word_embeddings

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.cls.predictions(hidden, self.bert.embeddings.word_embeddings)

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None,
                 inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None, labels: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> CausalLMOutput | tuple:
        """As the reference; `labels` give the shifted next-token loss (ignoring -100)."""
        if labels is not None:
            use_cache = False
        out = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, past_key_values, use_cache,
                        output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()

    def cross_kv(self, encoder_hidden_states: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        return self.bert.cross_kv(encoder_hidden_states)

    def step(self, input_ids: jax.Array, cache: tuple, cache_index, encoder_attention_mask,
             decoder_attention_mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """Static-cache decoding step -> (logits (B, T, V), cache)."""
        x, cache = self.bert.step(input_ids, cache, cache_index, encoder_attention_mask,
                                  decoder_attention_mask)
        return self.logits(x), cache

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """Load a single-model checkpoint (non-strict: missing weights are initialised and
        reported)."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int | str = "5GB"):
        return params.save_backbone(self, directory, max_shard_size)
