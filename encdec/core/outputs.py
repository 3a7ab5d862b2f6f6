"""Model outputs: dicts with attribute access, as transformers' `ModelOutput`.

Fields that are None are left out, so `out.to_tuple()` and `out[0]` follow the reference's
`return_dict=False` tuples. A plain dict subclass works with `tf.nest`; the Flax backend
registers the classes as pytrees.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ModelOutput(dict):
    """An ordered dict of the non-None fields, readable as attributes and by position."""

    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        if args:  # tf.nest / pytree reconstruction: one iterable of (key, value) pairs
            (pairs,) = args
            kwargs = {**dict(pairs), **kwargs}
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown fields {sorted(unknown)}")
        super().__init__((k, kwargs[k]) for k in self.FIELDS if kwargs.get(k) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in self.FIELDS:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())


class BaseModelOutput(ModelOutput):
    FIELDS = ("last_hidden_state", "pooler_output", "past_key_values", "hidden_states",
              "attentions", "cross_attentions")


class CausalLMOutput(ModelOutput):
    FIELDS = ("loss", "logits", "past_key_values", "hidden_states", "attentions",
              "cross_attentions")


class Seq2SeqLMOutput(ModelOutput):
    FIELDS = ("loss", "logits", "past_key_values", "decoder_hidden_states", "decoder_attentions",
              "cross_attentions", "encoder_last_hidden_state", "encoder_hidden_states",
              "encoder_attentions")


class GenerateOutput(ModelOutput):
    FIELDS = ("sequences", "sequences_scores", "scores", "beam_indices")
