"""DistilBERT in Keras 3: `DistilBertModel`, an encoder only (the reference has no DistilBERT
causal LM), following transformers' `modeling_distilbert` (word + position embeddings, no token
types; post-LayerNorm blocks with `q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`,
`ffn.lin1`/`lin2`, `output_layer_norm`; LayerNorm eps 1e-12; `config.activation`).

Attribute names reproduce the reference's state-dict names; every sublayer has an explicit
`name=`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from encdec.core.config import DistilBertConfig
from encdec.core.outputs import BaseModelOutput
from encdec.core.registry import DISTILBERT_ATTENTION, architecture, check_length
from encdec.core.weights import Table

from . import params
from .base import PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Block,
    Mask,
    dense,
    embed,
    layer_norm,
    padding_mask,
)


class DistilBertEmbeddings(keras.layers.Layer):
    """word + position embeddings (positions 0..T-1), LayerNorm, dropout."""

    def __init__(self, c: DistilBertConfig, **kwargs):
        super().__init__(**kwargs)
        self.word_embeddings = embed(c.vocab_size, c.dim, "word_embeddings")
        self.position_embeddings = embed(c.max_position_embeddings, c.dim,
                                             "position_embeddings")
        self.LayerNorm = layer_norm(c.layer_norm_eps, "LayerNorm")
        self.dropout = keras.layers.Dropout(c.dropout, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, input_ids: tf.Tensor | None, position_ids: tf.Tensor,
             inputs_embeds: tf.Tensor | None, training: bool = False) -> tf.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,H)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), training=training)


class DistilBertFFN(keras.layers.Layer):
    """`ffn`: lin1 -> activation -> lin2 -> dropout."""

    def __init__(self, c: DistilBertConfig, **kwargs):
        super().__init__(**kwargs)
        self.lin1 = dense(c.hidden_dim, "lin1")
        self.lin2 = dense(c.dim, "lin2")
        self.act = ACTIVATIONS[c.activation]
        self.dropout = keras.layers.Dropout(c.dropout, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.dropout(self.lin2(self.act(self.lin1(x))), training=training)


class DistilBertLayer(Block):
    """The reference's `TransformerBlock`: attention (with its `out_lin`) -> `sa_layer_norm`
    (+ residual) -> `ffn` -> `output_layer_norm` (+ residual)."""

    def __init__(self, c: DistilBertConfig, **kwargs):
        super().__init__(**kwargs)
        self.attention = Attention(c.dim, c.n_heads, DISTILBERT_ATTENTION, cross=False,
                                   dropout=c.attention_dropout, name="attention")
        self.sa_layer_norm = layer_norm(c.layer_norm_eps, "sa_layer_norm")
        self.ffn = DistilBertFFN(c, name="ffn")
        self.output_layer_norm = layer_norm(c.layer_norm_eps, "output_layer_norm")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, mask: Mask | None, output_attentions: bool = False,
             training: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """-> (x, attention probs or None)."""
        a, probs, _ = self.attention(x, mask=mask, output_attentions=output_attentions,
                                     training=training)
        x = self.sa_layer_norm(a + x)
        return self.output_layer_norm(self.ffn(x, training=training) + x), probs


class DistilBertTransformer(keras.layers.Layer):
    """The stack of `DistilBertLayer`s (`layer[i]`)."""

    def __init__(self, c: DistilBertConfig, **kwargs):
        super().__init__(**kwargs)
        self.layer = [DistilBertLayer(c, name=f"layer_{i}") for i in range(c.n_layers)]
        self.built = True  # sublayers create their variables on the first call


class DistilBertModel(PretrainedModel):
    """transformers' `DistilBertModel`: a bidirectional encoder (no pooler, no decoder)."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig, *, name: str = "distilbert", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        with params.constructing() as c:
            self.embeddings = DistilBertEmbeddings(config, name="embeddings")
            self.transformer = DistilBertTransformer(config, name="transformer")
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.embeddings.word_embeddings

    def call(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None,
             output_attentions=False, output_hidden_states=False, return_dict=True,
             training=False):
        """As the reference's `DistilBertModel.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref.shape[1] is not None:  # static: checked before any gather
            check_length(self.config, "input_ids" if input_ids is not None else "inputs_embeds",
                         ref.shape[1])
        if position_ids is None:
            position_ids = tf.range(tf.shape(ref)[1])[None]  # (1, T)
        x = self.embeddings(input_ids, position_ids, inputs_embeds, training=training)  # (B,T,H)
        mask = padding_mask(attention_mask, x.dtype)
        hidden, attns = [], []
        for block in self.transformer.layer:
            hidden.append(x)
            x, probs = block(x, mask=mask, output_attentions=output_attentions, training=training)
            attns.append(probs)
        hidden.append(x)
        out = BaseModelOutput(last_hidden_state=x,
                              hidden_states=tuple(hidden) if output_hidden_states else None,
                              attentions=tuple(attns) if output_attentions else None)
        return out if return_dict else out.to_tuple()
