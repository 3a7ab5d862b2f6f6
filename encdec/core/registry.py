"""Every architecture encdec supports, declared once.

An `Architecture` names its `model_type`s, config class, family (the model file each backend
uses for it), the reference's class names, base-model prefix, head keys, position rule, init
rules and the reference's TF/Flax naming. Config dispatch, weight tables, each backend's class
lookup, the converter, the docs' support matrix and the test matrix all derive from
`ARCHITECTURES`; nothing else in encdec lists model types.

Members of a family differ only by data: the BERT family's variations are a `BertLayout`
(token types or none, RoBERTa's position offset, ELECTRA's embedding projection, the LM head's
names), following transformers' `modeling_{bert,roberta,xlm_roberta,camembert,electra,
bert_generation}.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from . import weights
from .checkpoint import CheckpointError
from .config import (
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    ConfigError,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    ModelConfig,
    RobertaConfig,
    XLMRobertaConfig,
)
from .weights import Param, Role, Table


class Positions(Enum):
    """How position ids are made when the caller gives none."""

    ARANGE = "arange"  # past_length + arange(T)
    # RoBERTa: pad + (cumsum(ids != pad) + past_length) * (ids != pad); pads keep position `pad`
    FROM_INPUT_IDS = "from_input_ids"


@dataclass(frozen=True)
class LMHead:
    """An LM head's modules as the reference names them: [dense -> act -> norm ->] decoder.

    `bias` is a separate vocabulary bias that the decoder's bias is tied to (None: the decoder
    owns its bias). `activation` None means the config's `hidden_act`; `width` is the size the
    head projects to before the decoder ("hidden" or "embedding", ELECTRA's `embedding_size`).
    """

    decoder: str
    dense: str | None = None
    norm: str | None = None
    bias: str | None = None
    activation: str | None = None
    width: str = "hidden"


@dataclass(frozen=True)
class BertLayout:
    """What varies inside the BERT family."""

    head: LMHead
    token_types: bool = True  # `embeddings.token_type_embeddings`
    positions: Positions = Positions.ARANGE
    pooler: bool = True  # the base model has a pooler by default
    embedding_size: bool = False  # ELECTRA: embeddings sized `embedding_size`, projected


@dataclass(frozen=True)
class AttentionNames:
    """An attention block's projections as the reference names them (the one `Attention` of
    each backend builds exactly these modules; no per-architecture flag).

    Separate `query`/`key`/`value` Linears, or a `fused` projection (GPT-2's `c_attn`: q|k|v
    for self-attention, k|v for cross-attention, whose queries come from `query`). `out` is an
    output projection owned by the attention (DistilBERT's `out_lin`, GPT-2's `c_proj`); None
    when the caller owns it (BERT's `attention.output.dense`). `conv1d`: GPT-2's (in, out)
    weights. `resid_dropout`: dropout after `out` (GPT-2).
    """

    query: str | None = None
    key: str | None = None
    value: str | None = None
    fused: str | None = None
    out: str | None = None
    conv1d: bool = False
    resid_dropout: bool = False


BERT_ATTENTION = AttentionNames(query="query", key="key", value="value")
DISTILBERT_ATTENTION = AttentionNames(query="q_lin", key="k_lin", value="v_lin", out="out_lin")
GPT2_SELF_ATTENTION = AttentionNames(fused="c_attn", out="c_proj", conv1d=True,
                                     resid_dropout=True)
GPT2_CROSS_ATTENTION = AttentionNames(query="q_attn", fused="c_attn", out="c_proj", conv1d=True,
                                      resid_dropout=True)


@dataclass(frozen=True)
class InitRules:
    """The reference's `_init_weights`, as data: normal(0, initializer_range) for matrices,
    LayerNorm 1/0, biases 0, then these departures (regexes on names, matched at a dot)."""

    padding_rows: tuple[str, ...] = ()  # embeddings whose `pad_token_id` row is zero
    scaled: tuple[str, ...] = ()  # residual projections: std / sqrt(2 * num_hidden_layers)
    sinusoidal: str | None = None  # position table made sinusoidal when the config asks


@dataclass(frozen=True)
class RefNaming:
    """The reference's TF (`tf_model.h5`) naming of an architecture (see encdec/convert)."""

    main_layer: str  # the base model's Keras name (`bert`, `roberta`, `transformer`)
    renames: tuple[tuple[str, str], ...] = ()  # canonical module -> reference's
    causal_lm: bool = True  # the reference's TF had the causal LM too (not ELECTRA's)


@dataclass(frozen=True)
class Architecture:
    """One architecture, declared once."""

    name: str
    model_types: tuple[str, ...]
    config_class: type[ModelConfig]
    family: str  # the model file in each backend: "bert", "distilbert", "gpt2"
    base_class: str  # the reference's base model class (encoder)
    lm_class: str | None  # the reference's causal LM class (decoder); None: it has none
    prefix: str  # the base model's attribute in the LM class (`roberta`), no dot
    base_table: Callable[[ModelConfig, Architecture, bool], Table]
    lm_table: Callable[[ModelConfig, Architecture], Table] | None
    heads: tuple[str, ...] = ()  # regexes: head keys a base model drops when warm-starting
    layout: BertLayout | None = None  # BERT family only
    init: InitRules = InitRules()
    tf: RefNaming | None = None  # None: the reference had no TF class for it
    flax: bool = False  # the reference had a Flax class for it
    doc: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # reference class -> family class

    def encoder_table(self, config: ModelConfig, pooler: bool | None = None) -> Table:
        """The base model's table (`pooler` None: the architecture's default)."""
        return self.base_table(config, self, self.has_pooler if pooler is None else pooler)

    def require_decoder(self) -> None:
        """A clear error when the reference has no causal LM for this architecture."""
        if self.lm_table is None:
            raise ConfigError(f"{self.name} cannot be a decoder: the reference has no "
                              f"{self.name} causal LM (use it as the encoder)")

    def decoder_table(self, config: ModelConfig) -> Table:
        """The causal LM's table; a clear error when the reference has no causal LM."""
        self.require_decoder()
        return self.lm_table(config, self)

    @property
    def has_pooler(self) -> bool:
        return self.layout is not None and self.layout.pooler

    @property
    def can_decode(self) -> bool:
        return self.lm_table is not None


# --- BERT-family tables ---------------------------------------------------------------------

def _embedding_width(c: ModelConfig, layout: BertLayout) -> int:
    return c.embedding_size if layout.embedding_size else c.hidden_size


def bert_family_model(c: ModelConfig, arch: Architecture, pooler: bool) -> Table:
    """A BERT-family base model (`BertModel`, `RobertaModel`, `ElectraModel`, …)."""
    layout = arch.layout
    h, i, e = c.hidden_size, c.intermediate_size, _embedding_width(c, layout)
    ps = [Param("embeddings.word_embeddings.weight", (c.vocab_size, e), Role.EMBEDDING),
          Param("embeddings.position_embeddings.weight", (c.max_position_embeddings, e),
                Role.EMBEDDING)]
    if layout.token_types:
        ps.append(Param("embeddings.token_type_embeddings.weight", (c.type_vocab_size, e),
                        Role.EMBEDDING))
    ps += weights.norm("embeddings.LayerNorm", e)
    if e != h:
        ps += weights.linear("embeddings_project", e, h)
    for n in range(c.num_hidden_layers):
        layer = f"encoder.layer.{n}"
        ps += weights.bert_attention(f"{layer}.attention", h)
        if c.add_cross_attention:
            ps += weights.bert_attention(f"{layer}.crossattention", h)
        ps += [*weights.linear(f"{layer}.intermediate.dense", h, i),
               *weights.linear(f"{layer}.output.dense", i, h),
               *weights.norm(f"{layer}.output.LayerNorm", h)]
    if pooler:
        ps += weights.linear("pooler.dense", h, h)
    return Table(tuple(ps), ignored=(r"embeddings\.(position_ids|token_type_ids)",),
                 base_prefixes=(arch.prefix + ".",), heads=arch.heads)


def bert_family_lm(c: ModelConfig, arch: Architecture) -> Table:
    """A BERT-family causal LM: the base model (no pooler) under `prefix.` + the LM head."""
    head, p = arch.layout.head, arch.prefix + "."
    h, v = c.hidden_size, c.vocab_size
    w = _embedding_width(c, arch.layout) if head.width == "embedding" else h
    base = bert_family_model(c, arch, pooler=False)
    tied = p + "embeddings.word_embeddings.weight" if c.tie_word_embeddings else None
    ps: list[Param] = []
    if head.dense:
        ps += weights.linear(head.dense, h, w)
    if head.norm:
        ps += weights.norm(head.norm, w)
    if head.bias:
        ps.append(Param(head.bias, (v,), Role.BIAS))
    ps += [Param(f"{head.decoder}.weight", (v, w), Role.LINEAR, tied_to=tied),
           # tied: the decoder's bias is `bias`; untied: its own, `bias` unused (as the reference)
           Param(f"{head.decoder}.bias", (v,), Role.BIAS,
                 tied_to=head.bias if head.bias and c.tie_word_embeddings else None)]
    return Table(base.with_prefix(p).params + tuple(ps),
                 ignored=(re.escape(p) + r"embeddings\.(position_ids|token_type_ids)",
                          re.escape(p) + r"pooler\..*"), prefix=p,
                 heads=arch.heads)  # other heads of a checkpoint (ELECTRA's discriminator)


# --- the architectures ----------------------------------------------------------------------

_ROBERTA_HEAD = LMHead(decoder="lm_head.decoder", dense="lm_head.dense", norm="lm_head.layer_norm",
                       bias="lm_head.bias", activation="gelu")
_ROBERTA_LAYOUT = BertLayout(head=_ROBERTA_HEAD, positions=Positions.FROM_INPUT_IDS)
_ROBERTA_HEADS = (r"lm_head\..*", r"classifier\..*", r"qa_outputs\..*")
_ROBERTA_INIT = InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",
                                        r"embeddings\.position_embeddings\.weight"))
_WORD_PAD = InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",))


def _roberta_like(name: str, config_class: type[ModelConfig], cls: str, *,
                  flax: bool) -> Architecture:
    return Architecture(
        name=name, model_types=(name,), config_class=config_class, family="bert",
        base_class=f"{cls}Model", lm_class=f"{cls}ForCausalLM", prefix="roberta",
        base_table=bert_family_model, lm_table=bert_family_lm, heads=_ROBERTA_HEADS,
        layout=_ROBERTA_LAYOUT, init=_ROBERTA_INIT, tf=RefNaming("roberta"),
        flax=flax, doc=f"transformers' `{cls}Model` / `{cls}ForCausalLM`")


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="bert", model_types=("bert",), config_class=BertConfig, family="bert",
        base_class="BertModel", lm_class="BertLMHeadModel", prefix="bert",
        base_table=bert_family_model, lm_table=bert_family_lm,
        heads=(r"cls\..*", r"qa_outputs\..*", r"classifier\..*"),
        layout=BertLayout(head=LMHead(decoder="cls.predictions.decoder",
                                      dense="cls.predictions.transform.dense",
                                      norm="cls.predictions.transform.LayerNorm",
                                      bias="cls.predictions.bias")),
        init=_WORD_PAD, tf=RefNaming("bert", renames=(("cls", "mlm___cls"),)), flax=True,
        doc="transformers' `BertModel` / `BertLMHeadModel`"),
    _roberta_like("roberta", RobertaConfig, "Roberta", flax=True),
    _roberta_like("xlm-roberta", XLMRobertaConfig, "XLMRoberta", flax=True),
    _roberta_like("camembert", CamembertConfig, "Camembert", flax=False),  # no Flax class
    Architecture(
        name="electra", model_types=("electra",), config_class=ElectraConfig, family="bert",
        base_class="ElectraModel", lm_class="ElectraForCausalLM", prefix="electra",
        base_table=bert_family_model, lm_table=bert_family_lm,
        heads=(r"generator_predictions\..*", r"generator_lm_head\..*",
               r"discriminator_predictions\..*", r"classifier\..*", r"qa_outputs\..*"),
        layout=BertLayout(head=LMHead(decoder="generator_lm_head",
                                      dense="generator_predictions.dense",
                                      norm="generator_predictions.LayerNorm",
                                      activation="gelu", width="embedding"),
                          pooler=False, embedding_size=True),
        init=_WORD_PAD, tf=RefNaming("electra", causal_lm=False), flax=True,
        doc="transformers' `ElectraModel` / `ElectraForCausalLM`"),
    Architecture(
        name="bert-generation", model_types=("bert-generation",),
        config_class=BertGenerationConfig, family="bert", base_class="BertGenerationEncoder",
        lm_class="BertGenerationDecoder", prefix="bert", base_table=bert_family_model,
        lm_table=bert_family_lm, heads=(r"lm_head\..*",),
        layout=BertLayout(head=LMHead(decoder="lm_head.decoder", bias="lm_head.bias"),
                          token_types=False, pooler=False),
        init=_WORD_PAD, doc="transformers' `BertGenerationEncoder` / `BertGenerationDecoder`"),
    Architecture(
        name="distilbert", model_types=("distilbert",), config_class=DistilBertConfig,
        family="distilbert", base_class="DistilBertModel", lm_class=None, prefix="distilbert",
        base_table=lambda c, arch, pooler: weights.distilbert_model(c, arch.prefix, arch.heads),
        lm_table=None,
        heads=(r"vocab_transform\..*", r"vocab_layer_norm\..*", r"vocab_projector\..*",
               r"pre_classifier\..*", r"classifier\..*", r"qa_outputs\..*"),
        init=InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",),
                       sinusoidal=r"embeddings\.position_embeddings\.weight"),
        tf=RefNaming("distilbert"), flax=True,
        doc="transformers' `DistilBertModel` (encoder only)"),
    Architecture(
        name="gpt2", model_types=("gpt2",), config_class=GPT2Config, family="gpt2",
        base_class="GPT2Model", lm_class="GPT2LMHeadModel", prefix="transformer",
        base_table=lambda c, arch, pooler: weights.gpt2_model(c),
        lm_table=lambda c, arch: weights.gpt2_lm_head_model(c), heads=(r"lm_head\..*",),
        init=InitRules(scaled=(r"c_proj\.weight",)), tf=RefNaming("transformer"), flax=True,
        doc="transformers' `GPT2Model` / `GPT2LMHeadModel`"),
)

_BY_TYPE: dict[str, Architecture] = {mt: a for a in ARCHITECTURES for mt in a.model_types}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(a.family for a in ARCHITECTURES))


def config_classes() -> dict[str, type[ModelConfig]]:
    """model_type -> config class, for config dispatch."""
    return {mt: a.config_class for mt, a in _BY_TYPE.items()}


def architecture(config_or_type: ModelConfig | str) -> Architecture:
    """The architecture of a config (or a model_type); an error listing the supported ones."""
    mt = config_or_type if isinstance(config_or_type, str) else config_or_type.model_type
    if mt not in _BY_TYPE:
        raise ConfigError(f"unknown model_type {mt!r}; supported: {sorted(_BY_TYPE)}")
    return _BY_TYPE[mt]


def encoder_table(c: ModelConfig, pooler: bool | None = None) -> Table:
    return architecture(c).encoder_table(c, pooler)


def decoder_table(c: ModelConfig) -> Table:
    arch = architecture(c)
    arch.require_decoder()
    if not (c.is_decoder and c.add_cross_attention):
        raise CheckpointError(f"decoder config ({c.model_type}): needs is_decoder=True and "
                              "add_cross_attention=True to serve as a decoder")
    return arch.decoder_table(c)


# --- positions --------------------------------------------------------------------------------

def position_offset(c: ModelConfig) -> int:
    """The first position id a token gets (RoBERTa: `pad_token_id + 1`; else 0)."""
    arch = architecture(c)
    if arch.layout is not None and arch.layout.positions is Positions.FROM_INPUT_IDS:
        return c.pad_token_id + 1
    return 0


def max_positions(c: ModelConfig) -> int:
    """How many tokens (past included) the position table serves."""
    return c.max_position_embeddings - position_offset(c)


def check_length(c: ModelConfig, argument: str, length: int, past: int = 0) -> None:
    """Refuse `length` new tokens after `past` ones beyond the position table (every backend
    calls this on the host, from static shapes, before any gather or compiled code)."""
    limit = max_positions(c)
    if past + length > limit:
        offset = position_offset(c)
        held = f"{length} tokens" + (f" after {past} cached ones" if past else "")
        table = f"max_position_embeddings={c.max_position_embeddings}" + \
            (f" minus the offset {offset}" if offset else "")
        raise ValueError(f"{argument} has {held}; the {c.model_type} position table serves "
                         f"{limit} ({table})")


def position_ids(c: ModelConfig, input_ids: np.ndarray, past_length: int = 0) -> np.ndarray:
    """The reference's default position ids for `input_ids` (B, T) after `past_length` tokens
    (numpy; each backend writes the same rule in its own ops)."""
    input_ids = np.asarray(input_ids)
    arch = architecture(c)
    if arch.layout is not None and arch.layout.positions is Positions.FROM_INPUT_IDS:
        mask = (input_ids != c.pad_token_id).astype(np.int64)
        return (np.cumsum(mask, axis=1) + past_length) * mask + c.pad_token_id
    return np.broadcast_to(np.arange(input_ids.shape[1]) + past_length, input_ids.shape)


# --- init -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Init:
    """How one parameter is initialised: "normal" (std, then `zero_row` zeroed), "ones",
    "zeros" or "array" (a fixed table, e.g. DistilBERT's sinusoidal positions)."""

    kind: str
    std: float = 0.0
    zero_row: int | None = None
    array: np.ndarray | None = None


def _at_dot(regex: str) -> re.Pattern:
    return re.compile(r"(?:^|\.)" + regex + "$")


def initializers(table: Table, config: ModelConfig,
                 names: set[str] | None = None) -> Iterator[tuple[Param, Init]]:
    """(param, Init) for every owned parameter of a backbone's `table` (or those in `names`)."""
    rules = architecture(config).init
    std = config.initializer_range
    pad = config.pad_token_id
    padding = [_at_dot(r) for r in rules.padding_rows]
    scaled = [_at_dot(r) for r in rules.scaled]
    sinusoidal = _at_dot(rules.sinusoidal) if rules.sinusoidal and \
        getattr(config, "sinusoidal_pos_embds", False) else None
    for p in table.owned:
        if names is not None and p.name not in names:
            continue
        if sinusoidal is not None and sinusoidal.search(p.name):
            yield p, Init("array", array=sinusoidal_table(*p.shape))
        elif p.role in (Role.LINEAR, Role.CONV1D, Role.EMBEDDING):
            s = std / math.sqrt(2 * config.num_hidden_layers) \
                if any(r.search(p.name) for r in scaled) else std
            row = pad if pad is not None and 0 <= pad < p.shape[0] and p.role is Role.EMBEDDING \
                and any(r.search(p.name) for r in padding) else None
            yield p, Init("normal", std=s, zero_row=row)
        elif p.role is Role.NORM:
            yield p, Init("ones")
        else:
            yield p, Init("zeros")


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """The reference's `create_sinusoidal_embeddings` (DistilBERT), float32."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    j = np.arange(dim, dtype=np.float64)[None, :]
    enc = pos / np.power(10000, 2 * (j // 2) / dim)
    out = np.zeros((n_pos, dim), np.float32)
    out[:, 0::2] = np.sin(enc[:, 0::2])
    out[:, 1::2] = np.cos(enc[:, 1::2])
    return out


def family_class(families: dict[str, tuple[type, type | None]], config: ModelConfig, *,
                 decoder: bool) -> type:
    """The backend class (from its `families`: family -> (base, causal LM)) serving `config` as
    the encoder or the decoder; the clear error for an encoder-only architecture."""
    arch = architecture(config)
    if decoder:
        arch.require_decoder()
    return families[arch.family][decoder]


def public_classes(families: dict[str, tuple[type, type | None]],
                   module: str) -> dict[str, type]:
    """The reference's class names of every architecture, for a backend whose `families` maps
    each family to its (base model, causal LM or None) classes: the family's own class where
    the names agree (`BertModel`), else a subclass whose only change is `config_class`
    (`RobertaModel`), so that its `from_pretrained` refuses another model type's checkpoint."""
    out: dict[str, type] = {}
    for arch in ARCHITECTURES:
        for name, cls in zip((arch.base_class, arch.lm_class), families[arch.family],
                             strict=True):
            if name is None:
                continue
            out[name] = cls if cls.__name__ == name else type(
                name, (cls,), {"config_class": arch.config_class, "__module__": module,
                               "__qualname__": name,
                               "__doc__": f"{arch.doc}: encdec's `{cls.__name__}` for "
                                          f"{arch.name} checkpoints."})
    return out


def support_matrix() -> list[tuple[str, str, bool]]:
    """(encoder model_type, decoder model_type, supported) for every pair, for the docs."""
    return [(e.name, d.name, d.can_decode) for e in ARCHITECTURES for d in ARCHITECTURES]
