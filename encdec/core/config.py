"""Model and generation configs that read and write the reference's `config.json` files.

Field names and defaults follow transformers' `BertConfig`, `GPT2Config`, `EncoderDecoderConfig`
and `GenerationConfig`. Configs are mutable dataclasses; keys we do not model are kept in
`extra` and written back unchanged, so a `config.json` round-trips with every key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    CheckpointError,
    read_config_dict,
    read_json_object,
    resolve_checkpoint,
)

# activations every backend implements: exact erf GELU, tanh-approximate GELU (two names), ReLU,
# SiLU (two names: Marian's "swish")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


class ConfigError(ValueError):
    """An invalid config value; the message names the field (and the file, when read from one)."""


def _check(cls_name: str, name: str, ok: bool, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{cls_name}.{name}: expected {want}, got {value!r}")


# ----------------------------------------------------------------------------- field checks
# Every field is checked against its annotation (an int is not a bool, a float not a string),
# then against the rule its name has in `_RULES`. The reference's field names mean the same in
# every architecture, so one table serves every config class.


def _conforms(value: Any, tp: Any) -> bool:
    """Whether `value` has the annotated type (`int | None`, `list[int]`, `float`, …)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_conforms(v, arg) for v in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, (bool, np.bool_))
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if tp is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
                and math.isfinite(value))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # Any


def _type_name(tp: Any) -> str:
    names = {int: "an int", float: "a finite float", bool: "a bool (true/false)", str: "a string",
             type(None): "None (null)"}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


@dataclass(frozen=True)
class _Rule:
    """A value rule, applied to a field's value (to each element of a list of ids)."""

    ok: Callable[[Any], bool]
    want: str


_POSITIVE = _Rule(lambda v: v > 0, "a value > 0")
_NON_NEGATIVE = _Rule(lambda v: v >= 0, "a value >= 0")
_PROBABILITY = _Rule(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
_TOKEN_ID = _Rule(lambda v: v >= 0, "a token id >= 0")
_ACTIVATION = _Rule(lambda v: v in ACTIVATIONS, f"one of {ACTIVATIONS}")
_RULES: dict[str, _Rule] = {
    **dict.fromkeys((  # sizes and counts
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "type_vocab_size", "embedding_size",
        "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "dim", "hidden_dim", "n_layers",
        "n_heads", "d_model", "encoder_layers", "encoder_ffn_dim", "encoder_attention_heads",
        "decoder_layers", "decoder_ffn_dim", "decoder_attention_heads", "decoder_vocab_size",
        "num_beams", "num_return_sequences", "max_length", "repetition_penalty", "temperature",
    ), _POSITIVE),
    **dict.fromkeys((  # dropout and layer-drop probabilities
        "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
        "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout",
        "summary_last_dropout", "dropout", "attention_dropout", "activation_dropout",
        "qa_dropout", "seq_classif_dropout", "encoder_layerdrop", "decoder_layerdrop",
    ), _PROBABILITY),
    **dict.fromkeys((
        "layer_norm_eps", "layer_norm_epsilon", "initializer_range", "init_std",
        "min_length", "max_new_tokens", "min_new_tokens", "top_k", "no_repeat_ngram_size",
    ), _NON_NEGATIVE),
    **dict.fromkeys((
        "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
        "forced_bos_token_id", "forced_eos_token_id",
    ), _TOKEN_ID),
    **dict.fromkeys(("hidden_act", "activation_function", "activation"), _ACTIVATION),
    "top_p": _Rule(lambda v: 0 < v <= 1, "a value in (0, 1]"),
}


@functools.cache
def _field_types(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "extra"}


def _validate_fields(config: _Config) -> None:
    """Check every field of `config` by type, then by its rule in `_RULES`."""
    n = type(config).__name__
    if not isinstance(config.extra, dict):
        raise ConfigError(f"{n}.extra: expected a dict, got {config.extra!r}")
    for name, tp in _field_types(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, _Config) or (isinstance(value, dict) and tp is not dict):
            continue  # a nested config (EncoderDecoderConfig's sides) checks itself
        _check(n, name, _conforms(value, tp), value, _type_name(tp))
        rule = None if name in config._checked_elsewhere else _RULES.get(name)
        if rule is None or value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        _check(n, name, all(rule.ok(v) for v in items), value, rule.want)


class _AcceptsAnyKey(type):
    """Configs take any keyword, as the reference's do (`BertConfig(output_attentions=True)`):
    keys that are not fields go to `extra` and so to config.json."""

    def __call__(cls, *args: Any, **kwargs: Any):
        names = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
        unknown = {k: kwargs.pop(k) for k in list(kwargs) if k not in names}
        if unknown:
            kwargs["extra"] = {**kwargs.get("extra", {}), **unknown}
        return super().__call__(*args, **kwargs)


@dataclass
class _Config(metaclass=_AcceptsAnyKey):
    """Shared behaviour: unknown keys in `extra`, dict/json I/O, field validation."""

    model_type: ClassVar[str] = ""
    _checked_elsewhere: ClassVar[tuple[str, ...]] = ()  # fields whose `_RULES` entry is skipped
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Keys of a `config.json` that encdec does not model, written back unchanged."""

    def __getattr__(self, name: str) -> Any:  # only called when normal lookup fails
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """Unknown names land in `extra` (and so in config.json), as the reference allows
        (`model.config.vocab_size = ...`)."""
        known = name == "extra" or name.startswith("_") or hasattr(type(self), name) \
            or name in self.__dataclass_fields__
        if known:
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value

    @classmethod
    def _field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any):
        """Build from a `config.json` dict; `overrides` win over `d`."""
        d = {**d, **overrides}
        mt = d.pop("model_type", cls.model_type)
        if cls.model_type and mt != cls.model_type:
            raise ConfigError(f"{cls.__name__}: model_type is {mt!r}, expected {cls.model_type!r}")
        names = set(cls._field_names())
        known = {k: v for k, v in d.items() if k in names}
        extra = {**d.pop("extra", {}), **{k: v for k, v in d.items() if k not in names}}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self._field_names():
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, _Config) else value
        if self.model_type:
            out["model_type"] = self.model_type
        out.update(self.extra)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def update(self, **kwargs: Any) -> None:
        """Set fields (or extra keys) by name, then re-validate."""
        for k, v in kwargs.items():
            if k in self._field_names():
                setattr(self, k, v)
            else:
                self.extra[k] = v
        self.__post_init__()

    def __post_init__(self) -> None:
        _validate_fields(self)


@dataclass
class ModelConfig(_Config):
    """Fields every backbone config has (the reference's `PretrainedConfig` subset we use)."""

    is_decoder: bool = False
    """Causal self-attention (a decoder); set by `from_encoder_decoder_configs`."""
    add_cross_attention: bool = False
    """Cross-attention layers over the encoder's states (a seq2seq decoder)."""
    tie_word_embeddings: bool = True
    """The LM head shares the token embedding matrix (stored once)."""
    use_cache: bool = True
    """Return and reuse past keys and values while decoding."""
    pad_token_id: int | None = None
    """The padding token's id (None: none)."""
    bos_token_id: int | None = None
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = None
    """The end-of-sequence token's id, or a list of them (None: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # each field by type and rule; then what relates fields
        n = type(self).__name__
        _check(n, "num_attention_heads", self.hidden_size % self.num_attention_heads == 0,
               self.num_attention_heads, f"a divisor of hidden_size={self.hidden_size}")
        pad, vocab = self.pad_token_id, self.lm_vocab_size
        _check(n, "pad_token_id", pad is None or pad < vocab, pad,
               f"a token id below the vocabulary size {vocab}")

    @property
    def lm_vocab_size(self) -> int:
        """The size of the vocabulary a causal LM of this config predicts (Marian's decoder
        may have its own, `decoder_vocab_size`)."""
        return self.vocab_size

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any):
        directory = resolve_checkpoint(path_or_id)
        d = read_config_dict(directory)
        return config_from_dict(d, source=directory / CONFIG_NAME, expect=cls, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        _write_json(Path(directory) / CONFIG_NAME, self.to_dict())


@dataclass
class BertConfig(ModelConfig):
    """transformers' `BertConfig` (absolute position embeddings only)."""

    model_type: ClassVar[str] = "bert"
    vocab_size: int = 30522
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    hidden_size: int = 768
    """Width of the hidden states."""
    num_hidden_layers: int = 12
    """Number of Transformer layers."""
    num_attention_heads: int = 12
    """Attention heads per layer (a divisor of `hidden_size`)."""
    intermediate_size: int = 3072
    """Width of the feed-forward layer's inner projection."""
    hidden_act: str = "gelu"
    """Feed-forward activation (`gelu`, `gelu_new`, `relu`, `silu`, ...)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and each sublayer's output."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover."""
    type_vocab_size: int = 2
    """Number of token types (segment ids) embedded."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of weights."""
    layer_norm_eps: float = 1e-12
    """Epsilon of the layer norms."""
    classifier_dropout: float | None = None
    """Dropout of the reference's classification heads (kept for config.json)."""
    pad_token_id: int | None = 0
    """The padding token's id (None: none)."""

    @property
    def activation(self) -> str:
        return self.hidden_act

    def __post_init__(self) -> None:
        super().__post_init__()
        pet = self.extra.get("position_embedding_type", "absolute")
        _check("BertConfig", "position_embedding_type", pet == "absolute", pet, "'absolute'")


@dataclass
class GPT2Config(ModelConfig):
    """transformers' `GPT2Config`; `hidden_size` etc. are read-only aliases as in the reference."""

    model_type: ClassVar[str] = "gpt2"
    vocab_size: int = 50257
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    n_positions: int = 1024
    """Longest sequence the learned position embeddings cover."""
    n_embd: int = 768
    """Width of the hidden states."""
    n_layer: int = 12
    """Number of Transformer blocks."""
    n_head: int = 12
    """Attention heads per block (a divisor of `n_embd`)."""
    n_inner: int | None = None
    """Width of the MLP's inner projection (None: `4 * n_embd`)."""
    activation_function: str = "gelu_new"
    """Feed-forward activation (`gelu_new`, `gelu`, `relu`, `silu`, ...)."""
    resid_pdrop: float = 0.1
    """Dropout on each sublayer's output."""
    embd_pdrop: float = 0.1
    """Dropout on the embeddings."""
    attn_pdrop: float = 0.1
    """Dropout on the attention probabilities."""
    layer_norm_epsilon: float = 1e-5
    """Epsilon of the layer norms."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of weights."""
    summary_type: str = "cls_index"
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_use_proj: bool = True
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_activation: str | None = None
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_proj_to_labels: bool = True
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_first_dropout: float = 0.1
    """The reference's sequence-summary head option (kept for config.json)."""
    scale_attn_weights: bool = True
    """Divide attention scores by sqrt(head size)."""
    scale_attn_by_inverse_layer_idx: bool = False
    """Also divide scores by layer index + 1 (not supported: must be False)."""
    reorder_and_upcast_attn: bool = False
    """The reference's fp32 attention variant (not supported: must be False)."""
    bos_token_id: int | None = 50256
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 50256
    """The end-of-sequence token's id, or a list of them (None: none)."""

    def check_supported(self) -> None:
        """Refuse the reference's options that encdec's GPT-2 does not implement."""
        for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if getattr(self, name):
                raise NotImplementedError(f"GPT2Config.{name}=True is not supported")

    hidden_size = property(lambda self: self.n_embd)
    """Read-only: `n_embd` (the name other configs use)."""
    num_hidden_layers = property(lambda self: self.n_layer)
    """Read-only: `n_layer` (the name other configs use)."""
    num_attention_heads = property(lambda self: self.n_head)
    """Read-only: `n_head` (the name other configs use)."""
    max_position_embeddings = property(lambda self: self.n_positions)
    """Read-only: `n_positions` (the name other configs use)."""
    intermediate_size = property(lambda self: self.n_inner or 4 * self.n_embd)
    """Read-only: `n_inner`, or `4 * n_embd` when that is None."""
    layer_norm_eps = property(lambda self: self.layer_norm_epsilon)
    """Read-only: `layer_norm_epsilon` (the name other configs use)."""
    activation = property(lambda self: self.activation_function)
    """Read-only: `activation_function` (the name other configs use)."""


@dataclass
class RobertaConfig(BertConfig):
    """transformers' `RobertaConfig`: BERT's fields, positions offset by `pad_token_id + 1`."""

    model_type: ClassVar[str] = "roberta"
    vocab_size: int = 50265
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    pad_token_id: int | None = 1
    """The padding token's id (None: none)."""
    bos_token_id: int | None = 0
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 2
    """The end-of-sequence token's id, or a list of them (None: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        n, pad = type(self).__name__, self.pad_token_id
        _check(n, "pad_token_id", isinstance(pad, int) and 0 <= pad < self.max_position_embeddings
               - 1, pad, "an int in [0, max_position_embeddings - 1) (positions start after it)")


@dataclass
class XLMRobertaConfig(RobertaConfig):
    """transformers' `XLMRobertaConfig` (RoBERTa's fields and defaults)."""

    model_type: ClassVar[str] = "xlm-roberta"
    vocab_size: int = 30522
    """Number of tokens in the vocabulary (rows of the token embedding)."""


@dataclass
class CamembertConfig(RobertaConfig):
    """transformers' `CamembertConfig` (RoBERTa's fields and defaults)."""

    model_type: ClassVar[str] = "camembert"
    vocab_size: int = 30522
    """Number of tokens in the vocabulary (rows of the token embedding)."""


@dataclass
class Data2VecTextConfig(RobertaConfig):
    """transformers' `Data2VecTextConfig` (RoBERTa's fields and defaults)."""

    model_type: ClassVar[str] = "data2vec-text"
    vocab_size: int = 30522
    """Number of tokens in the vocabulary (rows of the token embedding)."""


@dataclass
class ElectraConfig(BertConfig):
    """transformers' `ElectraConfig`: BERT's fields plus `embedding_size` (the embeddings are
    projected to `hidden_size` when the two differ)."""

    model_type: ClassVar[str] = "electra"
    embedding_size: int = 128
    """Width of the embeddings, projected to `hidden_size` when it differs."""
    hidden_size: int = 256
    """Width of the hidden states."""
    num_attention_heads: int = 4
    """Attention heads per layer (a divisor of `hidden_size`)."""
    intermediate_size: int = 1024
    """Width of the feed-forward layer's inner projection."""
    summary_type: str = "first"
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_use_proj: bool = True
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_activation: str = "gelu"
    """The reference's sequence-summary head option (kept for config.json)."""
    summary_last_dropout: float = 0.1
    """The reference's sequence-summary head option (kept for config.json)."""


@dataclass
class BertGenerationConfig(ModelConfig):
    """transformers' `BertGenerationConfig`: BERT without token types or pooler."""

    model_type: ClassVar[str] = "bert-generation"
    vocab_size: int = 50358
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    hidden_size: int = 1024
    """Width of the hidden states."""
    num_hidden_layers: int = 24
    """Number of Transformer layers."""
    num_attention_heads: int = 16
    """Attention heads per layer (a divisor of `hidden_size`)."""
    intermediate_size: int = 4096
    """Width of the feed-forward layer's inner projection."""
    hidden_act: str = "gelu"
    """Feed-forward activation (`gelu`, `gelu_new`, `relu`, `silu`, ...)."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and each sublayer's output."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on the attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of weights."""
    layer_norm_eps: float = 1e-12
    """Epsilon of the layer norms."""
    pad_token_id: int | None = 0
    """The padding token's id (None: none)."""
    bos_token_id: int | None = 2
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 1
    """The end-of-sequence token's id, or a list of them (None: none)."""

    @property
    def activation(self) -> str:
        return self.hidden_act


@dataclass
class DistilBertConfig(ModelConfig):
    """transformers' `DistilBertConfig`; `hidden_size` etc. are read-only aliases."""

    model_type: ClassVar[str] = "distilbert"
    vocab_size: int = 30522
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    max_position_embeddings: int = 512
    """Longest sequence the position embeddings cover."""
    sinusoidal_pos_embds: bool = False
    """Fixed sinusoidal position embeddings instead of learned ones."""
    n_layers: int = 6
    """Number of Transformer layers."""
    n_heads: int = 12
    """Attention heads per layer (a divisor of `dim`)."""
    dim: int = 768
    """Width of the hidden states."""
    hidden_dim: int = 4 * 768
    """Width of the feed-forward layer's inner projection."""
    dropout: float = 0.1
    """Dropout on embeddings and each sublayer's output."""
    attention_dropout: float = 0.1
    """Dropout on the attention probabilities."""
    activation: str = "gelu"
    """Feed-forward activation (`gelu`, `relu`, ...)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of weights."""
    qa_dropout: float = 0.1
    """Dropout of the reference's question-answering head (kept for config.json)."""
    seq_classif_dropout: float = 0.2
    """Dropout of the reference's classification head (kept for config.json)."""
    pad_token_id: int | None = 0
    """The padding token's id (None: none)."""

    hidden_size = property(lambda self: self.dim)
    """Read-only: `dim` (the name other configs use)."""
    num_hidden_layers = property(lambda self: self.n_layers)
    """Read-only: `n_layers` (the name other configs use)."""
    num_attention_heads = property(lambda self: self.n_heads)
    """Read-only: `n_heads` (the name other configs use)."""
    intermediate_size = property(lambda self: self.hidden_dim)
    """Read-only: `hidden_dim` (the name other configs use)."""
    layer_norm_eps = property(lambda self: 1e-12)
    """Read-only: 1e-12, fixed in the reference."""


@dataclass
class BartConfig(ModelConfig):
    """transformers' `BartConfig`. encdec uses BART-family models as decoders, so `hidden_size`,
    `num_hidden_layers`, `num_attention_heads` and `intermediate_size` are read-only aliases of
    the decoder's fields (`d_model`, `decoder_layers`, `decoder_attention_heads`,
    `decoder_ffn_dim`); the encoder's fields are kept and written back unchanged."""

    model_type: ClassVar[str] = "bart"
    vocab_size: int = 50265
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    max_position_embeddings: int = 1024
    """Longest sequence the position embeddings cover."""
    encoder_layers: int = 12
    """Number of encoder layers of the seq2seq checkpoint (kept for config.json)."""
    encoder_ffn_dim: int = 4096
    """Width of the encoder's feed-forward inner projection (kept for config.json)."""
    encoder_attention_heads: int = 16
    """Attention heads per encoder layer (kept for config.json)."""
    decoder_layers: int = 12
    """Number of decoder layers."""
    decoder_ffn_dim: int = 4096
    """Width of the decoder's feed-forward inner projection."""
    decoder_attention_heads: int = 16
    """Attention heads per decoder layer (a divisor of `d_model`)."""
    encoder_layerdrop: float = 0.0
    """Probability of skipping an encoder layer in training (kept for config.json)."""
    decoder_layerdrop: float = 0.0
    """Probability of skipping a decoder layer in training (LayerDrop)."""
    activation_function: str = "gelu"
    """Feed-forward activation (`gelu_new`, `gelu`, `relu`, `silu`, ...)."""
    d_model: int = 1024
    """Width of the hidden states."""
    dropout: float = 0.1
    """Dropout on embeddings and each sublayer's output."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation."""
    init_std: float = 0.02
    """Standard deviation of the normal init of weights."""
    classifier_dropout: float | None = 0.0
    """Dropout of the reference's classification heads (kept for config.json)."""
    scale_embedding: bool = False
    """Multiply token embeddings by sqrt(`d_model`)."""
    is_encoder_decoder: bool = True
    """The reference's flag for a seq2seq model (written to config.json)."""
    pad_token_id: int | None = 1
    """The padding token's id (None: none)."""
    bos_token_id: int | None = 0
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 2
    """The end-of-sequence token's id, or a list of them (None: none)."""
    decoder_start_token_id: int | None = 2
    """The first token the decoder is given (None: none)."""
    forced_eos_token_id: int | list[int] | None = 2
    """Token forced as the last one when `max_length` is reached (None: none)."""

    hidden_size = property(lambda self: self.d_model)
    """Read-only: `d_model` (the name other configs use)."""
    num_hidden_layers = property(lambda self: self.decoder_layers)
    """Read-only: `decoder_layers` (the name other configs use)."""
    num_attention_heads = property(lambda self: self.decoder_attention_heads)
    """Read-only: `decoder_attention_heads` (the name other configs use)."""
    intermediate_size = property(lambda self: self.decoder_ffn_dim)
    """Read-only: `decoder_ffn_dim` (the name other configs use)."""
    activation = property(lambda self: self.activation_function)
    """Read-only: `activation_function` (the name other configs use)."""
    initializer_range = property(lambda self: self.init_std)
    """Read-only: `init_std` (the name other configs use)."""
    layer_norm_eps = property(lambda self: 1e-5)
    """Read-only: 1e-5, torch.nn.LayerNorm's default, as the reference."""

    @property
    def embed_scale(self) -> float:
        """The factor on token embeddings (`sqrt(d_model)` when `scale_embedding`)."""
        return self.d_model ** 0.5 if self.scale_embedding else 1.0


@dataclass
class MBartConfig(BartConfig):
    """transformers' `MBartConfig` (BART's fields; pre-norm layers and a final layer norm)."""

    model_type: ClassVar[str] = "mbart"
    decoder_start_token_id: int | None = None
    """The first token the decoder is given (None: none)."""


@dataclass
class MarianConfig(BartConfig):
    """transformers' `MarianConfig`: sinusoidal positions, and a decoder vocabulary of its own
    (`decoder_vocab_size`, `vocab_size` when unset)."""

    model_type: ClassVar[str] = "marian"
    vocab_size: int = 58101
    """Number of tokens in the vocabulary (rows of the token embedding)."""
    decoder_vocab_size: int | None = None
    """Size of the decoder's own vocabulary (None: `vocab_size`)."""
    classifier_dropout: float | None = None
    """Dropout of the reference's classification heads (kept for config.json)."""
    share_encoder_decoder_embeddings: bool = True
    """Encoder and decoder share one token embedding."""
    pad_token_id: int | None = 58100
    """The padding token's id (None: none)."""
    bos_token_id: int | None = None
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 0
    """The end-of-sequence token's id, or a list of them (None: none)."""
    decoder_start_token_id: int | None = 58100
    """The first token the decoder is given (None: none)."""
    forced_eos_token_id: int | list[int] | None = 0
    """Token forced as the last one when `max_length` is reached (None: none)."""

    def __post_init__(self) -> None:
        if self.decoder_vocab_size is None:  # as the reference's __init__
            self.decoder_vocab_size = self.vocab_size
        super().__post_init__()

    @property
    def lm_vocab_size(self) -> int:
        return self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size


@dataclass
class PegasusConfig(BartConfig):
    """transformers' `PegasusConfig`: sinusoidal positions, pre-norm layers, a final layer
    norm."""

    model_type: ClassVar[str] = "pegasus"
    classifier_dropout: float | None = None
    """Dropout of the reference's classification heads (kept for config.json)."""
    pad_token_id: int | None = 0
    """The padding token's id (None: none)."""
    bos_token_id: int | None = None
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = 1
    """The end-of-sequence token's id, or a list of them (None: none)."""
    decoder_start_token_id: int | None = 0
    """The first token the decoder is given (None: none)."""
    forced_eos_token_id: int | list[int] | None = 1
    """Token forced as the last one when `max_length` is reached (None: none)."""


# model_type -> model config class, for config dispatch (`config_from_dict`). The registry says
# which architecture each class serves (`Architecture.config_class`); a test keeps both in step.
def _subclasses(cls: type[ModelConfig]) -> list[type[ModelConfig]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


# model_type -> config class. Every config class declares its `model_type`, so defining one is
# what dispatch needs (no second list of model types; the registry's entries are checked
# against this in tests/core/test_registry.py).
CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    c.model_type: c for c in _subclasses(ModelConfig) if "model_type" in vars(c)}


def config_from_dict(d: dict[str, Any], *, source: Any = "config", expect: type | None = None,
                     **overrides: Any):
    """Dispatch on `model_type` (`CONFIG_CLASSES`); errors name the source file and the field."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a config object, got {type(d).__name__}")
    mt = d.get("model_type")
    classes: dict[str, type[_Config]] = {**CONFIG_CLASSES, "encoder-decoder": EncoderDecoderConfig}
    if not isinstance(mt, str) or mt not in classes:
        raise ConfigError(f"{source}: unknown model_type {mt!r}; supported: {sorted(classes)}")
    cls = classes[mt]
    if expect is not None and not issubclass(cls, expect):
        raise ConfigError(f"{source}: model_type {mt!r} is not a {expect.__name__}")
    try:
        return cls.from_dict(d, **overrides)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from None


@dataclass
class EncoderDecoderConfig(_Config):
    """transformers' `EncoderDecoderConfig`: an encoder and a decoder config plus seq2seq ids."""

    model_type: ClassVar[str] = "encoder-decoder"
    encoder: ModelConfig = None  # type: ignore[assignment]
    """The encoder's config (required)."""
    decoder: ModelConfig = None  # type: ignore[assignment]
    """The decoder's config, with `is_decoder` and `add_cross_attention` (required)."""
    is_encoder_decoder: bool = True
    """Always True (the reference's flag, written to config.json)."""
    decoder_start_token_id: int | None = None
    """Starts `decoder_input_ids` made from `labels`, and generation."""
    pad_token_id: int | None = None
    """Pads `labels` shifted into `decoder_input_ids` (None: none)."""

    @property
    def tie_encoder_decoder(self) -> bool:
        """Share the encoder's weights with the decoder's base model (kept in `extra`)."""
        return bool(self.extra.get("tie_encoder_decoder", False))

    @tie_encoder_decoder.setter
    def tie_encoder_decoder(self, value: bool) -> None:
        self.extra["tie_encoder_decoder"] = bool(value)

    def __post_init__(self) -> None:
        for side in ("encoder", "decoder"):
            value = getattr(self, side)
            if value is None:
                raise ConfigError(f"EncoderDecoderConfig.{side} is missing: an encoder-decoder "
                                  "config needs both 'encoder' and 'decoder' (see "
                                  "from_encoder_decoder_configs)")
            if isinstance(value, dict):
                setattr(self, side, config_from_dict(value, source=f"EncoderDecoderConfig.{side}",
                                                     expect=ModelConfig))
            elif not isinstance(value, ModelConfig):
                raise ConfigError(f"EncoderDecoderConfig.{side}: expected a model config, got "
                                  f"{type(value).__name__}")
        super().__post_init__()
        vocab = self.decoder.lm_vocab_size
        for name in ("decoder_start_token_id", "pad_token_id"):
            value = getattr(self, name)
            _check("EncoderDecoderConfig", name, value is None or value < vocab, value,
                   f"a token id below the decoder's vocabulary size {vocab}")
        for side in ("encoder", "decoder"):
            mt = getattr(self, side).model_type
            if mt not in CONFIG_CLASSES:
                raise ConfigError(f"EncoderDecoderConfig.{side}: unknown model_type {mt!r}; "
                                  f"supported: {sorted(CONFIG_CLASSES)}")
        # an architecture the reference has no causal LM for is refused by the registry
        # (`Architecture.require_decoder`) when a model is built from this config
        if not (self.decoder.is_decoder and self.decoder.add_cross_attention):
            raise ConfigError("EncoderDecoderConfig.decoder: needs is_decoder=True and "
                              "add_cross_attention=True (use from_encoder_decoder_configs)")

    @classmethod
    def from_encoder_decoder_configs(cls, encoder_config: ModelConfig,
                                     decoder_config: ModelConfig, **kwargs: Any):
        """As the reference: the decoder is switched to a causal decoder with cross-attention."""
        decoder_config.is_decoder = True
        decoder_config.add_cross_attention = True
        return cls(encoder=encoder_config, decoder=decoder_config, **kwargs)  # others in `extra`

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any):
        directory = resolve_checkpoint(path_or_id)
        return config_from_dict(read_config_dict(directory), source=directory / CONFIG_NAME,
                                expect=cls, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        _write_json(Path(directory) / CONFIG_NAME, self.to_dict())


@dataclass
class GenerationConfig(_Config):
    """transformers' `GenerationConfig` (the fields encdec implements; others kept in `extra`)."""

    # token ids are checked against the decoder's vocabulary when generate() runs
    # (validation.check_generation), where that limit is known
    _checked_elsewhere: ClassVar[tuple[str, ...]] = (
        "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
        "forced_bos_token_id", "forced_eos_token_id", "bad_words_ids")

    max_length: int | None = None
    """Longest output in tokens (None: the reference's default, 20 new tokens, with a warning)."""
    max_new_tokens: int | None = None
    """Most tokens to generate (wins over `max_length`; None: unset)."""
    min_length: int = 0
    """Fewest tokens in the output before EOS may end it."""
    min_new_tokens: int | None = None
    """Fewest new tokens before EOS may end a sequence (None: unset)."""
    early_stopping: bool | str = False
    """Beam search ends once `num_beams` are done (True), by heuristic, or 'never'."""
    do_sample: bool = False
    """Sample the next token instead of greedy or beam search."""
    num_beams: int = 1
    """Beams of beam search (1: greedy or sampling)."""
    temperature: float = 1.0
    """Divides the logits before sampling."""
    top_k: int = 50
    """Sample among the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Sample among the most likely tokens holding this probability mass."""
    repetition_penalty: float = 1.0
    """Penalty on the logits of tokens already generated (1.0: none)."""
    length_penalty: float = 1.0
    """Beam scores are divided by length ** length_penalty."""
    no_repeat_ngram_size: int = 0
    """No n-gram of this size occurs twice (0: off)."""
    bad_words_ids: list[list[int]] | None = None
    """Token sequences that are never generated (None: none)."""
    forced_bos_token_id: int | None = None
    """Token forced as the first generated one (None: none)."""
    forced_eos_token_id: int | list[int] | None = None
    """Token forced as the last one when `max_length` is reached (None: none)."""
    num_return_sequences: int = 1
    """Sequences returned per input (at most `num_beams` without sampling)."""
    output_scores: bool = False
    """Return the processed scores of each step (with `return_dict_in_generate`)."""
    return_dict_in_generate: bool = False
    """Return a `GenerateOutput` instead of the token ids alone."""
    use_cache: bool = True
    """Reuse the decoder's past keys and values at each step."""
    pad_token_id: int | None = None
    """Pads finished sequences (None: the model config's)."""
    bos_token_id: int | None = None
    """The beginning-of-sequence token's id (None: none)."""
    eos_token_id: int | list[int] | None = None
    """Ends a sequence; an id or a list of them (None: none)."""
    decoder_start_token_id: int | None = None
    """The first decoder token (None: the model config's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        n = "GenerationConfig"
        _check(n, "early_stopping", self.early_stopping in (True, False, "never"),
               self.early_stopping, "True, False or 'never'")
        _check(n, "num_return_sequences", self.num_return_sequences <= max(self.num_beams, 1)
               or self.do_sample, self.num_return_sequences, f"<= num_beams={self.num_beams}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any):
        """As `_Config.from_dict`; a null for a field that cannot be None means "unset" (the
        reference's defaults are None) and gives encdec's default."""
        fields = _field_types(cls)
        d = {k: v for k, v in d.items()
             if not (v is None and k in fields and not _conforms(None, fields[k]))}
        return super().from_dict(d, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Only non-default fields, as the reference writes `generation_config.json`."""
        default = GenerationConfig()
        out = {k: v for k, v in super().to_dict().items()
               if k in self.extra or getattr(default, k, object()) != v}
        return out

    @classmethod
    def from_model_config(cls, config: EncoderDecoderConfig) -> GenerationConfig:
        """Ids from the model config, as the reference does when no generation_config.json."""
        dec = config.decoder
        return cls(
            decoder_start_token_id=config.decoder_start_token_id,
            pad_token_id=config.pad_token_id if config.pad_token_id is not None
            else dec.pad_token_id,
            eos_token_id=config.extra.get("eos_token_id", dec.eos_token_id),
            bos_token_id=dec.bos_token_id,
        )

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> GenerationConfig:
        directory = resolve_checkpoint(path_or_id, filenames=(GENERATION_CONFIG_NAME,))
        path = directory / GENERATION_CONFIG_NAME
        try:
            d = read_json_object(path)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        try:
            return cls.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from None

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        _write_json(Path(directory) / GENERATION_CONFIG_NAME, self.to_dict())

    def merged(self, **overrides: Any) -> GenerationConfig:
        """A copy with per-call overrides applied (unknown names are an error)."""
        unknown = sorted(set(overrides) - set(self._field_names()))
        if unknown:
            raise TypeError(f"generate() got unknown generation arguments: {unknown}")
        return dataclasses.replace(self, extra=dict(self.extra),
                                   **{k: v for k, v in overrides.items() if v is not None})


def _write_json(path: Path, d: dict[str, Any]) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
