"""GPT-2 in Keras 3: `GPT2Model` (causal, optionally cross-attending) and `GPT2LMHeadModel`,
following transformers' `modeling_gpt2` (pre-LayerNorm blocks, fused `c_attn`, tanh-GELU
`gelu_new`, learned positions, `lm_head` tied to `wte`).

Attribute names reproduce the reference's state-dict names (`wte`, `h[i].attn.c_attn`,
`h[i].crossattention.q_attn`, `ln_f`, …). GPT-2's Conv1D stores its weight `(in, out)`, which is
exactly a Keras `Dense` kernel.
"""

from __future__ import annotations

import math
import os
from typing import Any

import keras
import tensorflow as tf

from encdec.core.config import GPT2Config
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.weights import Table, gpt2_lm_head_model, gpt2_model

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


def _layer_norm(c: GPT2Config, name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=c.layer_norm_epsilon, name=name)


class GPT2MLP(keras.layers.Layer):
    """c_fc -> gelu_new -> c_proj -> dropout."""

    def __init__(self, c: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        proj_std = c.initializer_range / math.sqrt(2 * c.n_layer)  # GPT-2's residual scaling
        self.c_fc = dense(c.intermediate_size, "c_fc", c.initializer_range)
        self.c_proj = dense(c.hidden_size, "c_proj", proj_std)
        self.act = ACTIVATIONS[c.activation_function]
        self.dropout = keras.layers.Dropout(c.resid_pdrop, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), training=training)


class GPT2Block(keras.layers.Layer):
    """x + attn(ln_1 x) [+ crossattention(ln_cross_attn x)] + mlp(ln_2 x)."""

    def __init__(self, c: GPT2Config, layer_idx: int, shared: GPT2Block | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        scale = (c.n_embd // c.n_head) ** -0.5 if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        kw = dict(dropout=c.attn_pdrop, resid_dropout=c.resid_pdrop, scale=scale,
                  std=c.initializer_range, proj_std=c.initializer_range / math.sqrt(2 * c.n_layer))
        if shared is not None:  # tie_encoder_decoder: the encoder block's sublayers
            self.ln_1, self.attn, self.ln_2 = shared.ln_1, shared.attn, shared.ln_2
        else:
            self.ln_1 = _layer_norm(c, "ln_1")
            self.attn = Attention(c.n_embd, c.n_head, gpt2=True, cross=False, name="attn", **kw)
            self.ln_2 = _layer_norm(c, "ln_2")
        if c.add_cross_attention:
            self.crossattention = Attention(c.n_embd, c.n_head, gpt2=True, cross=True,
                                            name="crossattention", **kw)
            self.ln_cross_attn = _layer_norm(c, "ln_cross_attn")
        self.mlp = shared.mlp if shared is not None else GPT2MLP(c, name="mlp")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, attn_mask: Mask | None = None, *, states=None,
             cross_mask: Mask | None = None, past: tuple | None = None,
             output_attentions: bool = False, training: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, cross_k, cross_v]))."""
        a, probs, kv = self.attn(self.ln_1(x), attn_mask, past=None if past is None else past[:2],
                                 output_attentions=output_attentions, training=training)
        x = x + a
        cross_probs = None
        if states is not None or (past is not None and len(past) == 4):
            a, cross_probs, ckv = self.crossattention(
                self.ln_cross_attn(x), cross_mask, states=states,
                past=None if past is None else past[2:], output_attentions=output_attentions,
                training=training)
            x = x + a
            kv = kv + ckv
        return x + self.mlp(self.ln_2(x), training=training), probs, cross_probs, kv

    def cross_kv(self, states: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Cross-attention keys/values (Be, h, S, d), computed once per generation."""
        return self.crossattention.project_kv(states)

    def step(self, x: tf.Tensor, cache: tuple, cache_index, attn_mask: Mask,
             cross_mask: Mask | None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding: cache = (self_k_buf, self_v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attn.step_self(self.ln_1(x), k_buf, v_buf, cache_index, attn_mask)
        x = x + a
        x = x + self.crossattention.step_cross(self.ln_cross_attn(x), ck, cv, cross_mask)
        return x + self.mlp(self.ln_2(x)), (k_buf, v_buf, ck, cv)


class GPT2Model(keras.Model):
    """transformers' `GPT2Model`: embeddings, `h` blocks, final `ln_f`."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, shared: GPT2Model | None = None,
                 name: str = "transformer", **kwargs):
        """`shared`: an encoder `GPT2Model` whose embeddings, blocks' sublayers and `ln_f` this
        model reuses (the reference's `tie_encoder_decoder`)."""
        super().__init__(name=name, **kwargs)
        self.config = config
        init = normal(config.initializer_range)
        if shared is not None:
            self.wte, self.wpe = shared.wte, shared.wpe
        else:
            self.wte = keras.layers.Embedding(config.vocab_size, config.n_embd,
                                              embeddings_initializer=init, name="wte")
            self.wpe = keras.layers.Embedding(config.n_positions, config.n_embd,
                                              embeddings_initializer=init, name="wpe")
        self.drop = keras.layers.Dropout(config.embd_pdrop, name="drop")
        tied = [] if shared is None else shared.h
        self.h = [GPT2Block(config, i, tied[i] if i < len(tied) else None, name=f"h_{i}")
                  for i in range(config.n_layer)]
        self.ln_f = shared.ln_f if shared is not None else _layer_norm(config, "ln_f")
        self.built = True  # sublayers create their variables on the first call
        params.build(self, config)

    def table(self) -> Table:
        return gpt2_model(self.config)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """A GPT-2 checkpoint (with or without the `transformer.` prefix)."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any):
        return params.save_backbone(self, directory, **kwargs)

    def _embed(self, input_ids, position_ids, inputs_embeds, token_type_ids, past,
               training: bool = False) -> tf.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, H)
        if position_ids is None:
            position_ids = (tf.range(tf.shape(inputs_embeds)[1]) + tf.cast(past, tf.int32))[None]
        x = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        return self.drop(x, training=training)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference's `GPT2Model` (always causal; arguments in BertModel's order, as
        every encdec backbone); legacy-tuple `past_key_values`."""
        c = self.config
        use_cache = bool(c.use_cache if use_cache is None else use_cache)
        past = 0 if past_key_values is None else tf.shape(past_key_values[0][0])[2]
        x = self._embed(input_ids, position_ids, inputs_embeds, token_type_ids, past, training)
        t = tf.shape(x)[1]
        attn_mask = causal_mask(t, past, past + t, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype)
        hidden, attns, crosses, presents = [x], [], [], []
        for i, block in enumerate(self.h):
            x, probs, cross_probs, kv = block(
                x, attn_mask, states=encoder_hidden_states, cross_mask=cross_mask,
                past=None if past_key_values is None else past_key_values[i],
                output_attentions=output_attentions, training=training)
            hidden.append(x)
            attns.append(probs)
            crosses.append(cross_probs)
            presents.append(kv)
        x = self.ln_f(x)
        hidden[-1] = x  # as the reference: the last hidden state is after ln_f
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(crosses) if output_attentions and crosses[0] is not None
            else None)
        return out if return_dict else out.to_tuple()

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index, encoder_attention_mask=None,
             attention_mask=None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding through every block: -> (hidden (B, T, H), new cache)."""
        x = self._embed(input_ids, None, None, None, cache_index)  # positions cache_index + t
        max_len = tf.shape(cache[0][0])[2]
        attn_mask = causal_mask(tf.shape(x)[1], cache_index, max_len, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype)
        new = []
        for block, entry in zip(self.h, cache, strict=True):
            x, entry = block.step(x, entry, cache_index, attn_mask, cross_mask)
            new.append(entry)
        return self.ln_f(x), tuple(new)


class GPT2LMHeadModel(keras.Model):
    """transformers' `GPT2LMHeadModel`: `transformer` + `lm_head` (tied to `wte`)."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, shared: GPT2Model | None = None,
                 name: str = "gpt2_lm_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.transformer = GPT2Model(config, shared=shared, name="transformer")
        if not config.tie_word_embeddings:
            self.lm_head = dense(config.vocab_size, "lm_head", config.initializer_range,
                                 use_bias=False)
        self.built = True  # sublayers create their variables on the first call
        params.build(self, config)

    def table(self) -> Table:
        return gpt2_lm_head_model(self.config)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """A GPT-2 checkpoint; weights it lacks (cross-attention) are initialised, reported."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any):
        return params.save_backbone(self, directory, **kwargs)

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(B, T, H) -> (B, T, V)."""
        if hasattr(self, "lm_head"):
            return self.lm_head(hidden)
        return tf.einsum("bth,vh->btv", hidden, self.transformer.wte.embeddings)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             labels=None, past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference; `labels` give the shifted next-token loss (ignoring -100)."""
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids,
                               inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                               past_key_values, use_cache=use_cache,
                               output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, training=training)
        logits = self.logits(out.last_hidden_state)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        out = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                             hidden_states=out.hidden_states, attentions=out.attentions,
                             cross_attentions=out.cross_attentions)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Per block, cross-attention (k, v) (Be, h, S, d) of the encoder states."""
        return tuple(block.cross_kv(states) for block in self.transformer.h)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
                    encoder_attention_mask=None, attention_mask=None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding: input_ids (B, T) -> (logits (B, T, V), new cache)."""
        x, cache = self.transformer.step(input_ids, cache, cache_index, encoder_attention_mask,
                                         attention_mask)
        return self.logits(x), cache
