"""The BERT family in Flax NNX: `BertModel` (encoder, or causal decoder with cross-attention) and
`BertLMHeadModel`, serving every architecture whose registry entry has family "bert" (BERT,
RoBERTa, XLM-R, CamemBERT, ELECTRA, BertGeneration) from its `BertLayout`: token types or none,
positions by arange or RoBERTa's rule from the input ids, ELECTRA's `embeddings_project`, and
the LM head's modules at the reference's names. Follows transformers' `modeling_bert.py` and
its copies (post-LayerNorm blocks, exact erf GELU, positions offset by the cache length).

Attribute names reproduce the reference's state-dict names (`encoder.layer.0.attention.self.query`),
so NNX state paths are `encoder.layer.0.attention.self.query.kernel`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
from encdec.core.config import BertConfig, ModelConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import BERT_ATTENTION, Positions, architecture, check_length

from . import params
from .base import CausalLM, PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Container,
    LMDecoder,
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


def _embedding_width(c: ModelConfig) -> int:
    return c.embedding_size if architecture(c).layout.embedding_size else c.hidden_size


def default_position_ids(config: ModelConfig, input_ids: jax.Array | None, length: int,
                         past: int | jax.Array) -> jax.Array:
    """The reference's default positions ((1|B, T), `encdec.core.registry.position_ids`):
    past + arange(T); RoBERTa's pad + (cumsum(ids != pad) + past) * (ids != pad), or
    arange(pad + 1, T + pad + 1) for inputs_embeds."""
    if architecture(config).layout.positions is Positions.FROM_INPUT_IDS:
        pad = config.pad_token_id
        if input_ids is None:
            return jnp.arange(pad + 1, length + pad + 1)[None]
        keep = (input_ids != pad).astype(jnp.int32)  # (B, T)
        return (jnp.cumsum(keep, axis=1) + past) * keep + pad
    return (jnp.arange(length) + past)[None]  # (1, T)


class BertEmbeddings(nnx.Module):
    """word + [token type +] position embeddings, LayerNorm, dropout (width `embedding_size`
    for ELECTRA)."""

    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs):
        layout, e = architecture(c).layout, _embedding_width(c)
        self.word_embeddings = embed(c.vocab_size, e, rngs=rngs)
        self.position_embeddings = embed(c.max_position_embeddings, e, rngs=rngs)
        self.token_type_embeddings = embed(c.type_vocab_size, e, rngs=rngs) \
            if layout.token_types else None
        self.LayerNorm = layer_norm(e, c.layer_norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob, rngs=rngs)

    def __call__(self, input_ids: jax.Array | None, token_type_ids: jax.Array | None,
                 position_ids: jax.Array, inputs_embeds: jax.Array | None) -> jax.Array:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros(x.shape[:2], jnp.int32)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this model has no token type embeddings")
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


class BertOutput(nnx.Module):
    """dense -> dropout -> LayerNorm(+ residual): `attention.output` and the FFN's `output`."""

    def __init__(self, c: ModelConfig, n_in: int, *, rngs: nnx.Rngs):
        self.dense = dense(n_in, c.hidden_size, rngs=rngs)
        self.LayerNorm = layer_norm(c.hidden_size, c.layer_norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(c.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nnx.Module):
    """`attention` / `crossattention`: `self` (the `Attention`) + `output` (dense, LayerNorm)."""

    def __init__(self, c: ModelConfig, cross: bool, *, rngs: nnx.Rngs):
        self.self = Attention(c.hidden_size, c.num_attention_heads, BERT_ATTENTION, cross=cross,
                              dropout=c.attention_probs_dropout_prob, rngs=rngs)
        self.output = BertOutput(c, c.hidden_size, rngs=rngs)


class BertIntermediate(nnx.Module):
    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.intermediate_size, rngs=rngs)
        self.act = ACTIVATIONS[c.hidden_act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(c, cross=False, rngs=rngs)
        self.crossattention = BertAttention(c, cross=True, rngs=rngs) \
            if c.add_cross_attention else None
        self.intermediate = BertIntermediate(c, rngs=rngs)
        self.output = BertOutput(c, c.intermediate_size, rngs=rngs)

    def __call__(self, x: jax.Array, mask: Mask | None, states: jax.Array | None,
                 cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.attention.self(x, mask, past=self_past,
                                           output_attentions=output_attentions)
        x = self.attention.output(a, x)
        cross_probs, present = None, kv
        if states is not None:
            if self.crossattention is None:
                raise ValueError("encoder_hidden_states given, but this model has no "
                                 "cross-attention: set config.add_cross_attention=True")
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
    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])


class BertPooler(nnx.Module):
    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(x[:, 0]))  # first token


class BertModel(PretrainedModel):
    """transformers' `BertModel` and its family's base models (`RobertaModel`, `ElectraModel`,
    `BertGenerationEncoder`, …): bidirectional encoder, or (`config.is_decoder`) a causal
    decoder with cross-attention when `config.add_cross_attention`. Built in inference mode."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig, add_pooling_layer: bool | None = None, *,
                 rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        arch = architecture(config)
        self.config = config
        self.add_pooling_layer = arch.has_pooler if add_pooling_layer is None \
            else add_pooling_layer
        e = _embedding_width(config)
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.embeddings_project = dense(e, config.hidden_size, rngs=rngs) \
            if e != config.hidden_size else None
        self.encoder = BertEncoder(config, rngs=rngs)
        self.pooler = BertPooler(config, rngs=rngs) if self.add_pooling_layer else None
        params.materialize(self, [(self, self.table(), config)], rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config, self.add_pooling_layer)

    def get_input_embeddings(self) -> nnx.Embed:
        return self.embeddings.word_embeddings

    def embed(self, input_ids: jax.Array | None, token_type_ids: jax.Array | None,
              position_ids: jax.Array | None, inputs_embeds: jax.Array | None,
              past: int | jax.Array) -> jax.Array:
        """Embeddings (B, T, hidden): default positions after `past` tokens, projected to the
        hidden size when the embeddings are narrower (ELECTRA)."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids, ref.shape[1], past)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        return x if self.embeddings_project is None else self.embeddings_project(x)

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
        check_length(c, "input_ids" if input_ids is not None else "inputs_embeds", T, past_len)
        x = self.embed(input_ids, token_type_ids, position_ids, inputs_embeds, past_len)
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
        """Static-cache decoding step: input_ids (B, T) after cache_index tokens, positions by
        the architecture's rule with the cache length `cache_index`. The cache's length is
        checked against the position table (a traced `cache_index` stays inside it)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoder cache", max_len)
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", T, cache_index)
        x = self.embed(input_ids, None, None, None, cache_index)  # (B, T, H)
        mask, cross_mask = step_masks(B, T, cache_index, max_len, x.dtype, decoder_attention_mask,
                                      encoder_attention_mask)
        new = []
        for layer, layer_cache in zip(self.encoder.layer, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return x, tuple(new)


def _place(root: nnx.Module, dotted: str, value: nnx.Module | nnx.Param) -> None:
    """Set `root.a.b.c = value`, creating `Container` modules along the path."""
    *path, name = dotted.split(".")
    for part in path:
        if getattr(root, part, None) is None:
            setattr(root, part, Container())
        root = getattr(root, part)
    setattr(root, name, value)


def _find(root: nnx.Module, dotted: str) -> Any:
    """`root.a.b.c` for "a.b.c"."""
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


class BertLMHeadModel(CausalLM):
    """transformers' `BertLMHeadModel` and its family's causal LMs (`RobertaForCausalLM`,
    `ElectraForCausalLM`, `BertGenerationDecoder`, …): the base model (no pooler) under the
    architecture's prefix and the LM head's modules at the names of `layout.head`
    ([dense -> activation -> LayerNorm ->] decoder), whose decoder weight is the word
    embedding matrix when `tie_word_embeddings`. Built in inference mode."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        arch = architecture(config)
        head, v = arch.layout.head, config.vocab_size
        w = _embedding_width(config) if head.width == "embedding" else config.hidden_size
        table = arch.decoder_table(config)
        self.config = config
        self.prefix = arch.prefix
        self.head = head
        self.activation = head.activation or config.hidden_act
        base = BertModel(config, add_pooling_layer=False, rngs=rngs)
        setattr(self, arch.prefix, base)
        if head.dense:
            _place(self, head.dense, dense(config.hidden_size, w, rngs=rngs))
        if head.norm:
            _place(self, head.norm, layer_norm(w, config.layer_norm_eps, rngs=rngs))
        if head.bias:  # the vocabulary bias the decoder's bias is tied to
            _place(self, head.bias, nnx.Param(jnp.zeros((v,))))
        tied = table.by_name[f"{head.decoder}.weight"].tied_to is not None
        _place(self, head.decoder, LMDecoder(w, v, tied=tied, rngs=rngs))
        params.tie_params(self, table)
        done = {f"{arch.prefix}.{p.name}" for p in base.table().owned}  # initialised by `base`
        params.init_params(self, table, config, {p.name for p in table.owned if p.name not in done},
                           rngs=rngs)
        self.eval()

    @property
    def base_model(self) -> BertModel:
        return getattr(self, self.prefix)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        x = hidden
        if self.head.dense:
            x = ACTIVATIONS[self.activation](_find(self, self.head.dense)(x))
        if self.head.norm:
            x = _find(self, self.head.norm)(x)
        return _find(self, self.head.decoder)(x, self.get_input_embeddings().embedding[...])

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
        out = self.base_model(input_ids, attention_mask, token_type_ids, position_ids,
                              inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                              past_key_values, use_cache, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()
