"""The BERT family in Keras 3 — BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, BertGeneration:
`BertModel` (encoder, or causal decoder with cross-attention) and `BertLMHeadModel`, following
transformers' `modeling_{bert,roberta,electra,bert_generation}` (post-LayerNorm blocks,
absolute positions offset by the cache length, token type 0 by default).

What varies inside the family is the registry's `BertLayout`, never a model type: token types
or none, RoBERTa's positions from the input ids, ELECTRA's `embedding_size` and
`embeddings_project`, and the LM head's modules, built at exactly the reference's dotted names
(`cls.predictions.transform.dense`, `lm_head.dense`, `generator_lm_head`, …). Attribute names
reproduce the reference's state-dict names; every sublayer has an explicit `name=`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from encdec.core.config import BertConfig, ModelConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import BERT_ATTENTION, Positions, architecture, check_length
from encdec.core.weights import Table

from . import params
from .base import CausalLM, PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Block,
    Container,
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


def _embedding_width(c: ModelConfig) -> int:
    """The embeddings' width: ELECTRA's `embedding_size` when the layout has one, else hidden."""
    return c.embedding_size if architecture(c).layout.embedding_size else c.hidden_size


class BertEmbeddings(keras.layers.Layer):
    """word + [token type +] position embeddings, LayerNorm, dropout (width `embedding_size`
    for ELECTRA)."""

    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        layout, e = architecture(c).layout, _embedding_width(c)
        self.word_embeddings = embed(c.vocab_size, e, "word_embeddings")
        self.position_embeddings = embed(c.max_position_embeddings, e, "position_embeddings")
        self.token_type_embeddings = embed(c.type_vocab_size, e, "token_type_embeddings") \
            if layout.token_types else None
        self.LayerNorm = layer_norm(c.layer_norm_eps, "LayerNorm")
        self.dropout = keras.layers.Dropout(c.hidden_dropout_prob, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, input_ids: tf.Tensor | None, token_type_ids: tf.Tensor | None,
             position_ids: tf.Tensor, inputs_embeds: tf.Tensor | None,
             training: bool = False) -> tf.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B,T,E)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = tf.zeros(tf.shape(x)[:2], tf.int32)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this architecture has no token type "
                             "embeddings (its registry layout has token_types=False)")
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), training=training)


def default_position_ids(config: ModelConfig, input_ids: tf.Tensor | None,
                         length: int | tf.Tensor, past: int | tf.Tensor) -> tf.Tensor:
    """The reference's default positions ((1|B, T), `encdec.core.registry.position_ids`):
    past + arange(T); RoBERTa's pad + (cumsum(ids != pad) + past) * (ids != pad), or
    arange(pad + 1, T + pad + 1) for inputs_embeds."""
    past = tf.cast(past, tf.int32)
    if architecture(config).layout.positions is Positions.FROM_INPUT_IDS:
        pad = config.pad_token_id
        if input_ids is None:
            return (tf.range(length) + pad + 1)[None]
        keep = tf.cast(tf.not_equal(tf.cast(input_ids, tf.int32), pad), tf.int32)  # (B, T)
        return (tf.cumsum(keep, axis=1) + past) * keep + pad
    return (tf.range(length) + past)[None]  # (1, T)


class BertOutput(keras.layers.Layer):
    """dense -> dropout -> LayerNorm(+ residual): `attention.output` and the FFN's `output`."""

    def __init__(self, c: ModelConfig, n_in: int, **kwargs):
        super().__init__(**kwargs)
        self.n_in = n_in  # the dense layer's input width (its kernel is created on first call)
        self.dense = dense(c.hidden_size, "dense")
        self.LayerNorm = layer_norm(c.layer_norm_eps, "LayerNorm")
        self.dropout = keras.layers.Dropout(c.hidden_dropout_prob, name="dropout")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, residual: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x), training=training) + residual)


class BertAttention(keras.layers.Layer):
    """`attention` / `crossattention`: `self` (the `Attention`) + `output` (dense, LayerNorm)."""

    output = None  # shadows keras.Layer.output (a read-only property) for the reference's name

    def __init__(self, c: ModelConfig, cross: bool, **kwargs):
        super().__init__(**kwargs)
        self.self = Attention(c.hidden_size, c.num_attention_heads, BERT_ATTENTION, cross=cross,
                              dropout=c.attention_probs_dropout_prob, name="self")
        self.output = BertOutput(c, c.hidden_size, name="output")
        self.built = True  # sublayers create their variables on the first call


class BertIntermediate(keras.layers.Layer):
    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.intermediate_size, "dense")
        self.act = ACTIVATIONS[c.hidden_act]
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.act(self.dense(x))


class BertLayer(Block):
    """Self-attention [-> cross-attention] -> feed-forward, each post-LayerNorm."""

    output = None  # see BertAttention

    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.attention = BertAttention(c, cross=False, name="attention")
        self.crossattention = BertAttention(c, cross=True, name="crossattention") \
            if c.add_cross_attention else None
        self.intermediate = BertIntermediate(c, name="intermediate")
        self.output = BertOutput(c, c.intermediate_size, name="output")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor, mask: Mask | None = None, states: tf.Tensor | None = None,
             cross_mask: Mask | None = None, past: Past | None = None,
             output_attentions: bool = False, training: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.attention.self(x, mask=mask, past=self_past,
                                           output_attentions=output_attentions,
                                           training=training)
        x = self.attention.output(a, x, training=training)
        cross_probs, present = None, kv
        if states is not None:  # as the reference: a cross cache alone does not cross-attend
            if self.crossattention is None:
                raise ValueError("encoder_hidden_states given, but this model has no "
                                 "cross-attention: set config.add_cross_attention=True")
            a, cross_probs, ckv = self.crossattention.self(
                x, mask=cross_mask, states=states, past=cross_past,
                output_attentions=output_attentions, training=training)
            x = self.crossattention.output(a, x, training=training)
            present = kv + ckv
        x = self.output(self.intermediate(x), x, training=training)
        return x, probs, cross_probs, present

    def step(self, x: tf.Tensor, cache: tuple[tf.Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attention.self.step_self(x, k_buf, v_buf, cache_index, mask)
        x = self.attention.output(a, x)
        a = self.crossattention.self.step_cross(x, ck, cv, cross_mask)
        x = self.crossattention.output(a, x)
        return self.output(self.intermediate(x), x), (k_buf, v_buf, ck, cv)


class BertEncoder(keras.layers.Layer):
    """The stack of `BertLayer`s (`layer[i]`)."""

    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.layer = [BertLayer(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]
        self.built = True  # sublayers create their variables on the first call


class BertPooler(keras.layers.Layer):
    def __init__(self, c: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense(c.hidden_size, "dense")
        self.built = True  # sublayers create their variables on the first call

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.tanh(self.dense(x[:, 0]))  # (B, H) from the first token


class BertModel(PretrainedModel):
    """A BERT-family base model (transformers' `BertModel`, `RobertaModel`, `ElectraModel`,
    `BertGenerationEncoder`, …): bidirectional encoder, or (`config.is_decoder`) a causal
    decoder with cross-attention when `config.add_cross_attention`."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig, add_pooling_layer: bool | None = None, *,
                 name: str = "bert", **kwargs):
        """`add_pooling_layer` None: the architecture's default (the registry's layout)."""
        super().__init__(name=name, **kwargs)
        self.config = config
        arch = architecture(config)
        self.add_pooling_layer = arch.has_pooler if add_pooling_layer is None \
            else add_pooling_layer
        with params.constructing() as c:
            self.embeddings = BertEmbeddings(config, name="embeddings")
            e = _embedding_width(config)
            self.embeddings_project = dense(config.hidden_size, "embeddings_project") \
                if e != config.hidden_size else None
            self.encoder = BertEncoder(config, name="encoder")
            self.pooler = BertPooler(config, name="pooler") if self.add_pooling_layer else None
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> Table:
        return architecture(self.config).encoder_table(self.config, self.add_pooling_layer)

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids: tf.Tensor | None, token_type_ids: tf.Tensor | None,
              position_ids: tf.Tensor | None, inputs_embeds: tf.Tensor | None,
              past: int | tf.Tensor) -> tf.Tensor:
        """Embeddings (B, T, hidden): default positions after `past` tokens, projected to the
        hidden size when the embeddings are narrower (ELECTRA). Dropout follows the `training`
        of the enclosing Keras call."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids, tf.shape(ref)[1], past)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, E)
        return x if self.embeddings_project is None else self.embeddings_project(x)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference's `BertModel.call`; `past_key_values` in the legacy tuple format."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = bool(c.use_cache if use_cache is None else use_cache) and c.is_decoder
        ref = input_ids if input_ids is not None else inputs_embeds
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past is None:  # a dynamic cache length: the positions follow the tensor
            past = tf.shape(past_key_values[0][0])[2]
        elif ref.shape[1] is not None:  # static: checked before any gather
            check_length(c, "input_ids" if input_ids is not None else "inputs_embeds",
                         ref.shape[1], past)
        x = self.embed(input_ids, token_type_ids, position_ids, inputs_embeds, past)
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        if c.is_decoder:  # causal, and-ed with the padding of past + current keys
            mask = causal_mask(b, t, past, past + t, x.dtype, attention_mask)
        else:
            mask = padding_mask(attention_mask, x.dtype)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.encoder.layer):
            hidden.append(x)
            x, p, cp, present = layer(x, mask=mask, states=encoder_hidden_states,
                                      cross_mask=cross_mask,
                                      past=None if past_key_values is None else past_key_values[i],
                                      output_attentions=output_attentions, training=training)
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

    def cross_kv(self, encoder_hidden_states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.crossattention.self.project_kv(encoder_hidden_states)
                     for layer in self.encoder.layer)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
             encoder_attention_mask: tf.Tensor | None,
             decoder_attention_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) after `cache_index` tokens, positions as
        the reference's rule with that cache length -> (hidden (B, T, H), new cache)."""
        max_len = cache[0][0].shape[2]
        check_length(self.config, "the decoding cache (max_length)", max_len)  # a traced index
        if isinstance(cache_index, int):
            check_length(self.config, "input_ids", input_ids.shape[1], cache_index)
        x = self.embed(input_ids, None, None, None, cache_index)
        mask, cross_mask = step_masks(tf.shape(x)[0], tf.shape(x)[1], cache_index, max_len,
                                      x.dtype, decoder_attention_mask, encoder_attention_mask)
        new = []
        for layer, layer_cache in zip(self.encoder.layer, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return x, tuple(new)


def _place(root: keras.layers.Layer, path: str,
           make: Callable[[keras.layers.Layer, str], Any]) -> Any:
    """Set `make(parent, leaf)` at dotted `path` under `root`, creating `Container`s on the way."""
    *parents, name = path.split(".")
    node = root
    for part in parents:
        child = vars(node).get(part)
        if child is None:
            child = Container(name=part)
            setattr(node, part, child)
        node = child
    value = make(node, name)
    setattr(node, name, value)
    return value


class BertLMHeadModel(CausalLM):
    """A BERT-family causal LM (transformers' `BertLMHeadModel`, `RobertaForCausalLM`,
    `ElectraForCausalLM`, `BertGenerationDecoder`, …): the base model (no pooler) under the
    registry's prefix and the LM head at the layout's names: [dense -> act -> norm ->] decoder,
    whose weight is the word embedding matrix when the table ties it."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig, *, name: str = "lm_head_model", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        arch = architecture(config)
        head, table = arch.layout.head, arch.decoder_table(config)
        width = _embedding_width(config) if head.width == "embedding" else config.hidden_size
        self.prefix = arch.prefix
        with params.constructing() as c:
            setattr(self, arch.prefix, BertModel(config, add_pooling_layer=False,
                                                 name=arch.prefix))
            self._dense = _place(self, head.dense, lambda node, n: dense(width, n)) \
                if head.dense else None
            self._act = ACTIVATIONS[head.activation or config.hidden_act]
            eps = config.layer_norm_eps
            self._norm = _place(self, head.norm, lambda node, n: layer_norm(eps, n)) \
                if head.norm else None
            if head.bias:
                _place(self, head.bias, lambda node, n: node.add_weight(
                    shape=(config.vocab_size,), initializer="zeros", name=n))
            tied = table.by_name[f"{head.decoder}.weight"].tied_to is not None
            self._decoder = _place(self, head.decoder, lambda node, n: LMDecoder(
                width, config.vocab_size, tied=tied, name=n))
        self.built = True  # sublayers create their variables on the first call
        if c.outermost:
            self(**params.one_token(config))  # creates the variables
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> BertModel:
        return getattr(self, self.prefix)

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(B, T, H) -> (B, T, V)."""
        x = hidden
        if self._dense is not None:
            x = self._act(self._dense(x))
        if self._norm is not None:
            x = self._norm(x)
        return self._decoder(x, self.get_input_embeddings().embeddings)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
             inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
             labels=None, past_key_values=None, use_cache=None, output_attentions=False,
             output_hidden_states=False, return_dict=True, training=False):
        """As the reference; `labels` give the shifted next-token loss (ignoring -100)."""
        if labels is not None:
            use_cache = False
        out = self.base_model(input_ids, attention_mask, token_type_ids, position_ids,
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
