"""DistilBERT in Flax NNX: `DistilBertModel`, an encoder only (the reference has no causal LM),
following transformers' `modeling_distilbert.py` (word + position embeddings without token
types, post-LayerNorm blocks with `q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`,
`ffn.lin1`/`lin2`, `output_layer_norm`, LayerNorm eps 1e-12, activation `config.activation`).

Attribute names reproduce the reference's state-dict names (`transformer.layer.0.attention.q_lin`),
so NNX state paths are `transformer.layer.0.attention.q_lin.kernel`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from encdec.core import weights
from encdec.core.config import DistilBertConfig
from encdec.core.outputs import BaseModelOutput
from encdec.core.registry import DISTILBERT_ATTENTION, architecture, check_length

from . import params
from .base import PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Mask,
    default_rngs,
    dense,
    embed,
    layer_norm,
    padding_mask,
)


class DistilBertEmbeddings(nnx.Module):
    """word + position embeddings (positions arange(T)), LayerNorm, dropout."""

    def __init__(self, c: DistilBertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = embed(c.vocab_size, c.hidden_size, rngs=rngs)
        self.position_embeddings = embed(c.max_position_embeddings, c.hidden_size, rngs=rngs)
        self.LayerNorm = layer_norm(c.hidden_size, c.layer_norm_eps, rngs=rngs)
        self.dropout = nnx.Dropout(c.dropout, rngs=rngs)

    def __call__(self, input_ids: jax.Array | None, position_ids: jax.Array,
                 inputs_embeds: jax.Array | None) -> jax.Array:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        return self.dropout(self.LayerNorm(x + self.position_embeddings(position_ids)))


class DistilBertFFN(nnx.Module):
    """`ffn`: lin1 -> activation -> lin2 -> dropout."""

    def __init__(self, c: DistilBertConfig, *, rngs: nnx.Rngs):
        self.lin1 = dense(c.hidden_size, c.intermediate_size, rngs=rngs)
        self.lin2 = dense(c.intermediate_size, c.hidden_size, rngs=rngs)
        self.act = ACTIVATIONS[c.activation]
        self.dropout = nnx.Dropout(c.dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(self.lin2(self.act(self.lin1(x))))


class DistilBertLayer(nnx.Module):
    """The reference's `TransformerBlock`: attention (with its `out_lin`) -> `sa_layer_norm`
    (+ residual) -> `ffn` -> `output_layer_norm` (+ residual)."""

    def __init__(self, c: DistilBertConfig, *, rngs: nnx.Rngs):
        h = c.hidden_size
        self.attention = Attention(h, c.num_attention_heads, DISTILBERT_ATTENTION, cross=False,
                                   dropout=c.attention_dropout, rngs=rngs)
        self.sa_layer_norm = layer_norm(h, c.layer_norm_eps, rngs=rngs)
        self.ffn = DistilBertFFN(c, rngs=rngs)
        self.output_layer_norm = layer_norm(h, c.layer_norm_eps, rngs=rngs)

    def __call__(self, x: jax.Array, mask: Mask | None, output_attentions: bool = False):
        """-> (x, attention probs or None)."""
        a, probs, _ = self.attention(x, mask, output_attentions=output_attentions)
        x = self.sa_layer_norm(a + x)
        return self.output_layer_norm(self.ffn(x) + x), probs


class DistilBertTransformer(nnx.Module):
    def __init__(self, c: DistilBertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([DistilBertLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])


class DistilBertModel(PretrainedModel):
    """transformers' `DistilBertModel`: a bidirectional encoder. Built in inference mode."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig, *, rngs: nnx.Rngs | None = None):
        rngs = default_rngs(rngs)
        self.config = config
        self.embeddings = DistilBertEmbeddings(config, rngs=rngs)
        self.transformer = DistilBertTransformer(config, rngs=rngs)
        params.materialize(self, [(self, self.table(), config)], rngs=rngs)
        self.eval()

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> nnx.Embed:
        return self.embeddings.word_embeddings

    def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None,
                 inputs_embeds: jax.Array | None = None, position_ids: jax.Array | None = None,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `DistilBertModel.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        T = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        check_length(self.config, "input_ids" if input_ids is not None else "inputs_embeds", T)
        if position_ids is None:
            position_ids = jnp.arange(T)[None]  # (1, T)
        x = self.embeddings(input_ids, position_ids, inputs_embeds)  # (B, T, H)
        mask = padding_mask(attention_mask, x.dtype)
        hidden, attns = [], []
        for layer in self.transformer.layer:
            hidden.append(x)
            x, p = layer(x, mask, output_attentions)
            attns.append(p)
        hidden.append(x)
        out = BaseModelOutput(last_hidden_state=x,
                              hidden_states=tuple(hidden) if output_hidden_states else None,
                              attentions=tuple(attns) if output_attentions else None)
        return out if return_dict else out.to_tuple()
