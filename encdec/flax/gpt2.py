"""GPT-2 in Flax NNX: `GPT2Model` (with cross-attention when `config.add_cross_attention`) and
`GPT2LMHeadModel`, following transformers' `modeling_gpt2.py` (pre-LayerNorm blocks, Conv1D
weights `(in, out)` held as Linear kernels, `gelu_new`, positions `past_length + arange(T)`
regardless of padding, final `ln_f`, `lm_head` tied to `wte`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
from encdec.core.config import GPT2Config
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    GPT2_CROSS_ATTENTION,
    GPT2_SELF_ATTENTION,
    architecture,
    check_length,
)

from . import params
from .base import CausalLM, PretrainedModel
from .layers import (
    ACTIVATIONS,
    PRECISION,
    Attention,
    Mask,
    Past,
    causal_lm_loss,
    causal_mask,
    default_rngs,
    dense,
    embed,
    layer_norm,
    padding_mask,
    split_past,
    step_masks,
)


class GPT2MLP(nnx.Module):
    def __init__(self, c: GPT2Config, *, rngs: nnx.Rngs):
        self.c_fc = dense(c.hidden_size, c.intermediate_size, rngs=rngs)
        self.c_proj = dense(c.intermediate_size, c.hidden_size, rngs=rngs)
        self.act = ACTIVATIONS[c.activation_function]
        self.dropout = nnx.Dropout(c.resid_pdrop, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nnx.Module):
    def __init__(self, c: GPT2Config, *, rngs: nnx.Rngs):
        h, eps = c.hidden_size, c.layer_norm_epsilon
        scale = (c.hidden_size // c.num_attention_heads) ** -0.5 if c.scale_attn_weights else 1.0
        kw = dict(dropout=c.attn_pdrop, resid_dropout=c.resid_pdrop, scale=scale, rngs=rngs)
        self.ln_1 = layer_norm(h, eps, rngs=rngs)
        self.attn = Attention(h, c.num_attention_heads, GPT2_SELF_ATTENTION, cross=False, **kw)
        self.ln_2 = layer_norm(h, eps, rngs=rngs)
        cross = c.add_cross_attention
        self.crossattention = Attention(h, c.num_attention_heads, GPT2_CROSS_ATTENTION,
                                        cross=True, **kw) if cross else None
        self.ln_cross_attn = layer_norm(h, eps, rngs=rngs) if cross else None
        self.mlp = GPT2MLP(c, rngs=rngs)

    def __call__(self, x: jax.Array, mask: Mask | None, states: jax.Array | None,
                 cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.attn(self.ln_1(x), mask, past=self_past,
                                 output_attentions=output_attentions)
        x = x + a
        cross_probs, present = None, kv
        if states is not None:
            if self.crossattention is None:
                raise ValueError("encoder_hidden_states given, but this GPT-2 has no "
                                 "cross-attention: set config.add_cross_attention=True")
            a, cross_probs, ckv = self.crossattention(
                self.ln_cross_attn(x), cross_mask, states=states, past=cross_past,
                output_attentions=output_attentions)
            x = x + a
            present = kv + ckv
        return x + self.mlp(self.ln_2(x)), probs, cross_probs, present

    def step(self, x: jax.Array, cache: tuple[jax.Array, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attn.step_self(self.ln_1(x), k_buf, v_buf, cache_index, mask)
        x = x + a
        x = x + self.crossattention.step_cross(self.ln_cross_attn(x), ck, cv, cross_mask)
        return x + self.mlp(self.ln_2(x)), (k_buf, v_buf, ck, cv)


class GPT2Model(PretrainedModel):
    """transformers' `GPT2Model`. Built in inference mode."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None):
        config.check_supported()
        rngs = default_rngs(rngs)
        self.config = config
        self.wte = embed(config.vocab_size, config.hidden_size, rngs=rngs)
        self.wpe = embed(config.max_position_embeddings, config.hidden_size, rngs=rngs)
        self.drop = nnx.Dropout(config.embd_pdrop, rngs=rngs)
        self.h = nnx.List([GPT2Block(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.ln_f = layer_norm(config.hidden_size, config.layer_norm_epsilon, rngs=rngs)
        params.materialize(self, [(self, self.table(), config)], rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> nnx.Embed:
        return self.wte

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None,
                 inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `GPT2Model.forward` (always causal); `past_key_values` in the
        legacy tuple format."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        B, T = x.shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_length(self.config, "input_ids" if input_ids is not None else "inputs_embeds", T,
                     past_len)
        if position_ids is None:
            position_ids = (jnp.arange(T) + past_len)[None]  # (1, T)
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        mask = causal_mask(B, T, past_len, past_len + T, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, block in enumerate(self.h):
            hidden.append(x)
            past = None if past_key_values is None else past_key_values[i]
            x, p, cp, present = block(x, mask, encoder_hidden_states, cross_mask, past,
                                      output_attentions)
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        x = self.ln_f(x)
        hidden.append(x)
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns)
            if output_attentions and encoder_hidden_states is not None else None)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, encoder_hidden_states: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every block, computed once."""
        return tuple(block.crossattention.project_kv(encoder_hidden_states) for block in self.h)

    def step(self, input_ids: jax.Array, cache: tuple, cache_index,
             encoder_attention_mask: jax.Array | None,
             decoder_attention_mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoder cache", max_len)
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", T, cache_index)
        position_ids = (jnp.arange(T) + cache_index)[None]  # (1, T)
        x = self.wte(input_ids) + self.wpe(position_ids)  # (B, T, H)
        mask, cross_mask = step_masks(B, T, cache_index, max_len, x.dtype, decoder_attention_mask,
                                      encoder_attention_mask)
        new = []
        for block, layer_cache in zip(self.h, cache, strict=True):
            x, layer_cache = block.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return self.ln_f(x), tuple(new)


class GPT2LMHeadModel(CausalLM):
    """transformers' `GPT2LMHeadModel`: `transformer` + `lm_head` (no bias; the `wte` matrix when
    `tie_word_embeddings`, else an own Linear). Built in inference mode."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        self.config = config
        table = architecture(config).decoder_table(config)
        self.transformer = GPT2Model(config, rngs=rngs)
        tied = table.by_name["lm_head.weight"].tied_to is not None
        self.lm_head = None if tied else \
            dense(config.hidden_size, config.vocab_size, use_bias=False, rngs=rngs)
        done = {f"transformer.{p.name}" for p in self.transformer.table().owned}
        params.init_params(self, table, config, {p.name for p in table.owned if p.name not in done},
                           rngs=rngs)
        self.eval()

    @property
    def base_model(self) -> GPT2Model:
        return self.transformer

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return jnp.einsum("bth,vh->btv", hidden, self.transformer.wte.embedding[...],
                          precision=PRECISION)  # (B, T, V): tied to `wte`

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None,
                 inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None, labels: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> CausalLMOutput | tuple:
        """As the reference; `labels` give the shifted next-token loss (ignoring -100)."""
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids,
                               inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                               past_key_values, use_cache, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()
