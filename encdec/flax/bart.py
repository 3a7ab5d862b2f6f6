"""The BART family's decoder in Flax NNX: `BartDecoder`, `BartDecoderLayer` and `BartForCausalLM`,
serving every architecture whose registry entry has family "bart" (BART, mBART, Marian,
Pegasus) from its `BartLayout`: learned positions read at ids + offset or a fixed sinusoidal
table, post-norm (x = LN(x + f(x))) or pre-norm (x = x + f(LN(x))) layers with a final
`layer_norm`, `layernorm_embedding`, and the embedding scale applied inside the lookup (BART,
mBART) or after it, to caller `inputs_embeds` too (Marian, Pegasus). Follows transformers'
`modeling_{bart,mbart,marian,pegasus}.py` (`*Decoder`, `*DecoderLayer`, `*ForCausalLM`).

Attribute names reproduce the reference's state-dict names (`model.decoder.layers.0.self_attn.
q_proj`), so NNX state paths are `model.decoder.layers.0.self_attn.q_proj.kernel`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
from encdec.core.config import BartConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    BART_ATTENTION,
    BartLayout,
    architecture,
    bart_decoder,
    causal_lm_config,
    check_length,
)

from . import params
from .base import CausalLM
from .layers import (
    ACTIVATIONS,
    PRECISION,
    Attention,
    Container,
    Mask,
    Past,
    causal_mask,
    cross_entropy,
    default_rngs,
    dense,
    embed,
    layer_norm,
    padding_mask,
    split_past,
    step_masks,
)


def _layout(config: BartConfig) -> BartLayout:
    return architecture(config).layout


class BartDecoderLayer(nnx.Module):
    """`self_attn`, `encoder_attn` (cross-attention, always built) and the FFN `fc1` -> act ->
    `fc2`, each with its LayerNorm, post-norm or pre-norm as the layout says."""

    def __init__(self, c: BartConfig, *, rngs: nnx.Rngs):
        h, eps, heads = c.hidden_size, c.layer_norm_eps, c.num_attention_heads
        self.pre_norm = _layout(c).pre_norm
        kw = dict(dropout=c.attention_dropout, rngs=rngs)
        self.self_attn = Attention(h, heads, BART_ATTENTION, cross=False, **kw)
        self.self_attn_layer_norm = layer_norm(h, eps, rngs=rngs)
        self.encoder_attn = Attention(h, heads, BART_ATTENTION, cross=True, **kw)
        self.encoder_attn_layer_norm = layer_norm(h, eps, rngs=rngs)
        self.fc1 = dense(h, c.intermediate_size, rngs=rngs)
        self.fc2 = dense(c.intermediate_size, h, rngs=rngs)
        self.final_layer_norm = layer_norm(h, eps, rngs=rngs)
        self.act = ACTIVATIONS[c.activation]
        self.dropout = nnx.Dropout(c.dropout, rngs=rngs)
        self.activation_dropout = nnx.Dropout(c.activation_dropout, rngs=rngs)

    def _in(self, x: jax.Array, norm: nnx.LayerNorm) -> jax.Array:  # a sublayer's input
        return norm(x) if self.pre_norm else x

    def _out(self, residual: jax.Array, y: jax.Array, norm: nnx.LayerNorm) -> jax.Array:
        x = residual + self.dropout(y)
        return x if self.pre_norm else norm(x)

    def _ffn(self, x: jax.Array) -> jax.Array:
        y = self.act(self.fc1(self._in(x, self.final_layer_norm)))  # (B, T, ffn)
        y = self.fc2(self.activation_dropout(y))
        return self._out(x, y, self.final_layer_norm)

    def __call__(self, x: jax.Array, mask: Mask | None, states: jax.Array | None,
                 cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.self_attn(self._in(x, self.self_attn_layer_norm), mask,
                                      past=self_past,
                                      output_attentions=output_attentions)
        x = self._out(x, a, self.self_attn_layer_norm)
        cross_probs, present = None, kv
        if states is not None:
            a, cross_probs, ckv = self.encoder_attn(
                self._in(x, self.encoder_attn_layer_norm), cross_mask, states=states,
                past=cross_past, output_attentions=output_attentions)
            x = self._out(x, a, self.encoder_attn_layer_norm)
            present = kv + ckv
        return self._ffn(x), probs, cross_probs, present

    def step(self, x: jax.Array, cache: tuple[jax.Array, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.self_attn.step_self(self._in(x, self.self_attn_layer_norm),
                                                   k_buf, v_buf, cache_index, mask)
        x = self._out(x, a, self.self_attn_layer_norm)
        a = self.encoder_attn.step_cross(self._in(x, self.encoder_attn_layer_norm), ck, cv,
                                         cross_mask)
        x = self._out(x, a, self.encoder_attn_layer_norm)
        return self._ffn(x), (k_buf, v_buf, ck, cv)


class BartDecoder(nnx.Module):
    """transformers' `BartDecoder` (and `MBartDecoder`, `MarianDecoder`, `PegasusDecoder`):
    token and position embeddings, [`layernorm_embedding`,] the layers, [final `layer_norm`].
    Always causal, always with cross-attention. `decoder_layerdrop` skips each layer with that
    probability in training mode (the layer's output is replaced by its input). Built in
    inference mode."""

    config_class = BartConfig

    def __init__(self, config: BartConfig, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        layout = _layout(config)
        h, eps = config.hidden_size, config.layer_norm_eps
        self.config = config
        self.embed_tokens = embed(config.lm_vocab_size, h, rngs=rngs)
        self.embed_positions = embed(config.max_position_embeddings + layout.position_offset, h,
                                     rngs=rngs)
        self.layernorm_embedding = layer_norm(h, eps, rngs=rngs) \
            if layout.layernorm_embedding else None
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        # a layer is skipped where this dropout zeroes a one (probability decoder_layerdrop)
        self.layerdrop = nnx.Dropout(config.decoder_layerdrop, rngs=rngs)
        self.layers = nnx.List([BartDecoderLayer(config, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.layer_norm = layer_norm(h, eps, rngs=rngs) if layout.final_norm else None
        params.materialize(self, [(self, self.table(), config)], rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return bart_decoder(self.config, architecture(self.config))

    def get_input_embeddings(self) -> nnx.Embed:
        return self.embed_tokens

    def embed(self, input_ids: jax.Array | None, position_ids: jax.Array | None,
              inputs_embeds: jax.Array | None, past: int | jax.Array) -> jax.Array:
        """Scaled token embeddings + position embeddings (+ `layernorm_embedding`), dropout:
        (B, T, hidden). Positions are past + arange(T) unless given (read at + offset); the
        fixed sinusoidal table gets no gradient (the reference freezes it)."""
        layout = _layout(self.config)
        scale = self.config.embed_scale
        if inputs_embeds is None:
            x = self.embed_tokens(input_ids) * scale  # (B, T, H)
        else:
            x = inputs_embeds * scale if layout.scale_inputs_embeds else inputs_embeds
        if position_ids is None:
            position_ids = (jnp.arange(x.shape[1]) + past)[None]  # (1, T)
        table = self.embed_positions.embedding[...]
        if layout.sinusoid is not None:
            table = jax.lax.stop_gradient(table)
        x = x + jnp.take(table, position_ids + layout.position_offset, axis=0)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `BartDecoder.forward`; `past_key_values` in the legacy tuple
        format (per layer (self_k, self_v[, cross_k, cross_v]))."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = c.use_cache if use_cache is None else use_cache
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_length(c, "input_ids" if input_ids is not None else "inputs_embeds", T, past_len)
        x = self.embed(input_ids, position_ids, inputs_embeds, past_len)
        mask = causal_mask(B, T, past_len, past_len + T, x.dtype, attention_mask)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        keep = None  # LayerDrop in training: which layers run, (L,) bool
        if not self.layerdrop.deterministic and self.layerdrop.rate > 0.0:
            keep = self.layerdrop(jnp.ones((len(self.layers),), x.dtype)) != 0
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.layers):
            hidden.append(x)
            past = None if past_key_values is None else past_key_values[i]
            y, p, cp, present = layer(x, mask, encoder_hidden_states, cross_mask, past,
                                      output_attentions)
            x = y if keep is None else jnp.where(keep[i], y, x)  # a skipped layer: identity
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
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
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.encoder_attn.project_kv(encoder_hidden_states)
                     for layer in self.layers)

    def step(self, input_ids: jax.Array, cache: tuple, cache_index,
             encoder_attention_mask: jax.Array | None,
             decoder_attention_mask: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)
        (no dropout, no layerdrop: the caller passes an inference view)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoder cache", max_len)
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", T, cache_index)
        x = self.embed(input_ids, None, None, cache_index)  # (B, T, H)
        mask, cross_mask = step_masks(B, T, cache_index, max_len, x.dtype, decoder_attention_mask,
                                      encoder_attention_mask)
        new = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, tuple(new)


class BartForCausalLM(CausalLM):
    """transformers' `BartForCausalLM` (and `MBartForCausalLM`, `MarianForCausalLM`,
    `PegasusForCausalLM`): `model.decoder` + `lm_head` (no bias; the `embed_tokens` matrix
    when `tie_word_embeddings`, else an own Linear). Built in inference mode."""

    config_class = BartConfig

    def __init__(self, config: BartConfig, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        causal_lm_config(config)
        self.config = config
        table = architecture(config).decoder_table(config)
        self.model = Container()  # the reference's `BartDecoderWrapper`: holds `decoder`
        self.model.decoder = BartDecoder(config, rngs=rngs)
        tied = table.by_name["lm_head.weight"].tied_to is not None
        self.lm_head = None if tied else \
            dense(config.hidden_size, config.lm_vocab_size, use_bias=False, rngs=rngs)
        done = {f"model.decoder.{p.name}" for p in self.base_model.table().owned}
        params.init_params(self, table, config, {p.name for p in table.owned if p.name not in done},
                           rngs=rngs)
        self.eval()

    @property
    def base_model(self) -> BartDecoder:
        return self.model.decoder

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return jnp.einsum("bth,vh->btv", hidden, self.get_input_embeddings().embedding[...],
                          precision=PRECISION)  # (B, T, V): tied to `embed_tokens`

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, inputs_embeds: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None, labels: jax.Array | None = None,
                 past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> CausalLMOutput | tuple:
        """As the reference; `labels` are NOT shifted (as transformers 5's `BartForCausalLM`:
        labels[:, i] is the target of logits[:, i]), mean over labels != -100."""
        out = self.base_model(input_ids, attention_mask, position_ids, inputs_embeds,
                              encoder_hidden_states, encoder_attention_mask, past_key_values,
                              use_cache, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else cross_entropy(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()
