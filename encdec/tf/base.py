"""The bases of every family's public models: `PretrainedModel` (`from_pretrained` /
`save_pretrained` of a single-model checkpoint) and `CausalLM` (an LM head over a decoder
backbone: the decoding contract's `cross_kv` / `step`, the weight table, the input embeddings),
so that a family file holds only its own layers. Follows the reference's `PreTrainedModel`
loading semantics through `params.load_backbone` / `params.save_backbone`.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from encdec.core import weights
from encdec.core.registry import architecture

from . import params


class Model(keras.Model):
    """A `keras.Model` whose first `fit` traces its train step once, not twice."""

    def make_train_function(self, force: bool = False):
        # Without a distribution strategy Keras creates the optimizer's variables inside the
        # first trace of the train step, and TF traces a function that creates variables a
        # second time: the first `fit` of a MiniLM bert2bert took 41.6 CPU s (without XLA),
        # 20.5 with the optimizer built here first. (With a strategy Keras has built it.)
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force)


class PretrainedModel(Model):
    """A model saved and loaded as one of the reference's classes: its `config_class`, its
    weight `table()` (each family's), and `causal_lm` choosing the reference class it is saved
    as (the registry's `lm_class`, else its `base_class`)."""

    config_class: type
    causal_lm = False

    def table(self) -> weights.Table:
        raise NotImplementedError  # each family's weight table

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs: Any):
        """Load a single-model checkpoint of this class's model type, with or without the
        architecture's prefix (non-strict: weights it lacks, e.g. cross-attention, are
        initialised and reported; weights this model lacks, e.g. heads or a seq2seq
        checkpoint's encoder, are dropped and reported); in inference mode."""
        return params.load_backbone(cls, path_or_id, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int | str = "5GB"):
        """Write `config.json` and the weights under the reference's names and class."""
        arch = architecture(self.config)
        return params.save_backbone(self, directory, max_shard_size,
                                    arch.lm_class if self.causal_lm else arch.base_class)


class CausalLM(PretrainedModel):
    """An LM head over a decoder backbone (`base_model`, which has `cross_kv` and `step`):
    each family gives `base_model`, `logits` and its forward."""

    causal_lm = True

    def table(self) -> weights.Table:
        return architecture(self.config).decoder_table(self.config)

    @property
    def base_model(self) -> keras.layers.Layer:
        raise NotImplementedError  # the decoder backbone under the architecture's prefix

    def logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        raise NotImplementedError

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self.base_model.get_input_embeddings()

    def cross_kv(self, encoder_hidden_states: tf.Tensor) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return self.base_model.cross_kv(encoder_hidden_states)

    def step(self, input_ids: tf.Tensor, cache: tuple, cache_index,
             encoder_attention_mask: tf.Tensor | None,
             decoder_attention_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tuple]:
        """Static-cache decoding step -> (logits (B, T, V), new cache)."""
        x, cache = self.base_model.step(input_ids, cache, cache_index, encoder_attention_mask,
                                        decoder_attention_mask)
        return self.logits(x), cache
