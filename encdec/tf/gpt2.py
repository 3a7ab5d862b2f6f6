"""GPT-2 in Keras 3: `GPT2Model` (causal, optionally cross-attending) and `GPT2LMHeadModel`,
following transformers' `modeling_gpt2` (pre-LayerNorm blocks, fused `c_attn`, tanh-GELU
`gelu_new`, learned positions, `lm_head` tied to `wte`).

Attribute names reproduce the reference's state-dict names (`wte`, `h[i].attn.c_attn`,
`h[i].crossattention.q_attn`, `ln_f`, …). GPT-2's Conv1D stores its weight `(in, out)`, which is
exactly a Keras `Dense` kernel.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from encdec.core.config import GPT2Config
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    GPT2_CROSS_ATTENTION,
    GPT2_SELF_ATTENTION,
    architecture,
    check_length,
)
from encdec.core.weights import Table

from . import params
from .base import CausalLM, PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Block,
    LMDecoder,
    Mask,
    Past,
    causal_lm_loss,
    causal_mask,
    dense,
    embed,
    layer_norm,
    padding_mask,
    split_past,
    step_masks,
)


class GPT2MLP(keras.layers.Layer):
    """c_fc -> gelu_new -> c_proj -> dropout."""

    def __init__(self, c: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        self.c_fc = dense(c.intermediate_size, "c_fc")
        self.c_proj = dense(c.hidden_size, "c_proj")
        self.act = ACTIVATIONS[c.activation_function]
        self.dropout = keras.layers.Dropout(c.resid_pdrop, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), training=training)


class GPT2Block(Block):
    """x + attn(ln_1 x) [+ crossattention(ln_cross_attn x)] + mlp(ln_2 x)."""

    def __init__(self, c: GPT2Config, **kwargs):
        super().__init__(**kwargs)
        h, eps = c.hidden_size, c.layer_norm_epsilon
        scale = (c.hidden_size // c.num_attention_heads) ** -0.5 if c.scale_attn_weights else 1.0
        kw = dict(dropout=c.attn_pdrop, resid_dropout=c.resid_pdrop, scale=scale)
        self.ln_1 = layer_norm(eps, "ln_1")
        self.attn = Attention(h, c.num_attention_heads, GPT2_SELF_ATTENTION, cross=False,
                              name="attn", **kw)
        self.ln_2 = layer_norm(eps, "ln_2")
        if c.add_cross_attention:
            self.crossattention = Attention(h, c.num_attention_heads, GPT2_CROSS_ATTENTION,
                                            cross=True, name="crossattention", **kw)
            self.ln_cross_attn = layer_norm(eps, "ln_cross_attn")
        else:
            self.crossattention = self.ln_cross_attn = None
        self.mlp = GPT2MLP(c, name="mlp")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, mask: Mask | None = None, states: tf.Tensor | None = None,
             cross_mask: Mask | None = None, past: Past | None = None,
             output_attentions: bool = False, training: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.attn(self.ln_1(x), mask=mask, past=self_past,
                                 output_attentions=output_attentions, training=training)
        x = x + a
        cross_probs, present = None, kv
        if states is not None:  # as the reference: a cross cache alone does not cross-attend
            if self.crossattention is None:
                raise ValueError("encoder_hidden_states given, but this GPT-2 has no "
                                 "cross-attention: set config.add_cross_attention=True")
            a, cross_probs, ckv = self.crossattention(
                self.ln_cross_attn(x), mask=cross_mask, states=states, past=cross_past,
                output_attentions=output_attentions, training=training)
            x = x + a
            present = kv + ckv
        return x + self.mlp(self.ln_2(x), training=training), probs, cross_probs, present

    def step(self, x: tf.Tensor, cache: tuple[tf.Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attn.step_self(self.ln_1(x), k_buf, v_buf, cache_index, mask)
        x = x + a
        x = x + self.crossattention.step_cross(self.ln_cross_attn(x), ck, cv, cross_mask)
        return x + self.mlp(self.ln_2(x)), (k_buf, v_buf, ck, cv)


class GPT2Model(PretrainedModel):
    """transformers' `GPT2Model`: embeddings, `h` blocks, final `ln_f`."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, name: str = "transformer", **kwargs):
        super().__init__(name=name, **kwargs)
        config.check_supported()
        self.config = config
        with params.constructing() as c:
            self.wte = embed(config.vocab_size, config.hidden_size, "wte")
            self.wpe = embed(config.max_position_embeddings, config.hidden_size, "wpe")
            self.drop = keras.layers.Dropout(config.embd_pdrop, name="drop")
            self.h = [GPT2Block(config, name=f"h_{i}") for i in range(config.num_hidden_layers)]
            self.ln_f = layer_norm(config.layer_norm_epsilon, "ln_f")
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.wte

    def _embed(self, input_ids, token_type_ids, position_ids, inputs_embeds, past_length,
               training: bool = False) -> tf.Tensor:
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        if position_ids is None:  # past + arange(T), regardless of padding (as the reference)
            position_ids = (tf.range(tf.shape(x)[1]) + tf.cast(past_length, tf.int32))[None]
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        return self.drop(x, training=training)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference's `GPT2Model` (always causal; arguments in BertModel's order, as
        every encdec backbone); legacy-tuple `past_key_values`."""
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
        x = self._embed(input_ids, token_type_ids, position_ids, inputs_embeds, past, training)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        mask = causal_mask(b, t, past, past + t, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, block in enumerate(self.h):
            hidden.append(x)
            x, p, cp, present = block(x, mask=mask, states=encoder_hidden_states,
                                      cross_mask=cross_mask,
                                      past=None if past_key_values is None else past_key_values[i],
                                      output_attentions=output_attentions, training=training)
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        x = self.ln_f(x)
        hidden.append(x)  # as the reference: the last hidden state is after ln_f
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns)
            if output_attentions and encoder_hidden_states is not None else None)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, encoder_hidden_states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every block, computed once."""
        return tuple(block.crossattention.project_kv(encoder_hidden_states) for block in self.h)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
             encoder_attention_mask: tf.Tensor | None,
             decoder_attention_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)."""
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoding cache (max_length)", max_len)  # a traced index
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", input_ids.shape[1], cache_index)
        x = self._embed(input_ids, None, None, None, cache_index)  # (B, T, H)
        mask, cross_mask = step_masks(tf.shape(x)[0], tf.shape(x)[1], cache_index, max_len,
                                      x.dtype, decoder_attention_mask, encoder_attention_mask)
        new = []
        for block, layer_cache in zip(self.h, cache, strict=True):
            x, layer_cache = block.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return self.ln_f(x), tuple(new)


class GPT2LMHeadModel(CausalLM):
    """transformers' `GPT2LMHeadModel`: `transformer` + `lm_head` (no bias), whose weight is
    `wte`'s matrix when the table ties it (then it holds no variable of its own)."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, name: str = "gpt2_lm_head", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        tied = self.table().by_name["lm_head.weight"].tied_to is not None
        with params.constructing() as c:
            self.transformer = GPT2Model(config, name="transformer")
            self.lm_head = None if tied else dense(config.vocab_size, "lm_head", use_bias=False)
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> GPT2Model:
        return self.transformer

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(B, T, H) -> (B, T, V)."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return LMDecoder.tied_logits(hidden, self.transformer.wte.embeddings)

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
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        out = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                             hidden_states=out.hidden_states, attentions=out.attentions,
                             cross_attentions=out.cross_attentions)
        return out if return_dict else out.to_tuple()
