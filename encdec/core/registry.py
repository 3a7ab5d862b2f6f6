"""Every architecture encdec supports, declared once.

An `Architecture` names its `model_type`s, config class, family (the model file each backend
uses for it), the reference's class names, base-model prefix, head keys, weight tables, position
rule, init rules and the reference's TF/Flax naming. Every family's weight table is declared
here (from `weights`' building blocks), and so is the composite's (`encoder_decoder_table`).
Weight tables, each backend's class lookup, the converter, the docs' support matrix and the test
matrix all derive from `ARCHITECTURES`. Config dispatch (`config.CONFIG_CLASSES`, below the
registry) is derived from the config classes' own `model_type`, and a test keeps the two in
step; the backends' reference-named classes are written from `ARCHITECTURES` by
tools/gen_classes.py.

Members of a family differ only by data: the BERT family's variations are a `BertLayout`
(token types or none, RoBERTa's position offset, ELECTRA's embedding projection, the LM head's
names), following transformers' `modeling_{bert,roberta,xlm_roberta,camembert,electra,
bert_generation}.py`; the BART family's (decoders only) are a `BartLayout` (learned or
sinusoidal positions, post- or pre-norm, the embedding and final layer norms), following
`modeling_{bart,mbart,marian,pegasus}.py`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from . import weights
from .checkpoint import CheckpointError
from .config import (
    BartConfig,
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    ConfigError,
    Data2VecTextConfig,
    DistilBertConfig,
    ElectraConfig,
    EncoderDecoderConfig,
    GPT2Config,
    MarianConfig,
    MBartConfig,
    ModelConfig,
    PegasusConfig,
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


class Sinusoid(Enum):
    """How a sinusoidal position table lays out its sines and cosines."""

    INTERLEAVED = "interleaved"  # DistilBERT: sin at even features, cos at odd
    HALVES = "halves"  # Marian, Pegasus: sin in the first half, cos in the second


@dataclass(frozen=True)
class BartLayout:
    """What varies inside the BART family (its decoder, `{Bart,MBart,Marian,Pegasus}Decoder`).

    Positions are learned (`embed_positions` has `max_position_embeddings + position_offset`
    rows and position p reads row p + offset) or a fixed sinusoidal table (`sinusoid`; no
    offset). Layers are post-norm (BART, Marian: residual, then LayerNorm) or `pre_norm`
    (mBART, Pegasus: LayerNorm, sublayer, residual) with a `final_norm` (`layer_norm`) after
    the last layer. `not_encoder_decoder`: the reference's causal LM flips its config's
    `is_encoder_decoder` (Pegasus's does not; the flag only changes config.json).
    `layernorm_embedding` normalises token + position embeddings.
    `scale_inputs_embeds`: the embedding scale applies to caller-given `inputs_embeds` too
    (Marian, Pegasus multiply after the lookup; BART and mBART scale inside the lookup).
    """

    position_offset: int = 2
    sinusoid: Sinusoid | None = None
    pre_norm: bool = False
    final_norm: bool = False
    layernorm_embedding: bool = True
    scale_inputs_embeds: bool = False
    not_encoder_decoder: bool = True  # the causal LM sets `is_encoder_decoder=False` (not Pegasus)


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
# BART family: `self_attn` and `encoder_attn` both; queries are scaled by head_dim**-0.5 before
# the product, which is the same softmax as scaling the scores
BART_ATTENTION = AttentionNames(query="q_proj", key="k_proj", value="v_proj",
                                out="out_proj")


@dataclass(frozen=True)
class InitRules:
    """The reference's `_init_weights`, as data: normal(0, initializer_range) for matrices,
    LayerNorm 1/0, biases 0, then these departures (regexes on names, matched at a dot)."""

    padding_rows: tuple[str, ...] = ()  # embeddings whose `pad_token_id` row is zero
    scaled: tuple[str, ...] = ()  # residual projections: std / sqrt(2 * num_hidden_layers)
    sinusoidal: str | None = None  # position table made sinusoidal when the config asks
    sinusoid: Sinusoid = Sinusoid.INTERLEAVED
    always_sinusoidal: bool = False  # the table is always sinusoidal (not a config switch)


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
    family: str  # the model file in each backend: "bert", "distilbert", "gpt2", "bart"
    base_class: str | None  # the reference's base model class (encoder); None: decoder only
    lm_class: str | None  # the reference's causal LM class (decoder); None: it has none
    prefix: str  # the base model's attribute path in the LM class (`roberta`, `model.decoder`)
    base_table: Callable[[ModelConfig, Architecture, bool], Table] | None
    lm_table: Callable[[ModelConfig, Architecture], Table] | None
    heads: tuple[str, ...] = ()  # regexes: head keys a base model drops when warm-starting
    layout: BertLayout | BartLayout | None = None  # BERT and BART families
    init: InitRules = InitRules()
    tf: RefNaming | None = None  # None: the reference had no TF class for it
    flax: bool = False  # the reference had a Flax class for it
    doc: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # reference class -> family class

    def encoder_table(self, config: ModelConfig, pooler: bool | None = None) -> Table:
        """The base model's table (`pooler` None: the architecture's default)."""
        self.require_encoder()
        assert self.base_table is not None  # require_encoder: for mypy
        return self.base_table(config, self, self.has_pooler if pooler is None else pooler)

    def require_encoder(self) -> None:
        """A clear error for an architecture encdec serves as a decoder only."""
        if self.base_table is None:
            raise ConfigError(f"{self.name} cannot be the encoder: encdec supports {self.name} "
                              f"as a decoder only ({self.lm_class}); pick an encoder among "
                              f"{[a.name for a in ARCHITECTURES if a.can_encode]}")

    def require_decoder(self) -> None:
        """A clear error when the reference has no causal LM for this architecture."""
        if self.lm_table is None:
            raise ConfigError(f"{self.name} cannot be a decoder: the reference has no "
                              f"{self.name} causal LM (use it as the encoder)")

    def decoder_table(self, config: ModelConfig) -> Table:
        """The causal LM's table; a clear error when the reference has no causal LM."""
        self.require_decoder()
        assert self.lm_table is not None  # require_decoder: for mypy
        return self.lm_table(config, self)

    @property
    def bert_layout(self) -> BertLayout:
        """The BERT-family layout, for that family's tables."""
        assert isinstance(self.layout, BertLayout), f"{self.name} is not of the BERT family"
        return self.layout

    @property
    def bart_layout(self) -> BartLayout:
        """The BART-family layout, for that family's tables."""
        assert isinstance(self.layout, BartLayout), f"{self.name} is not of the BART family"
        return self.layout

    @property
    def has_pooler(self) -> bool:
        return isinstance(self.layout, BertLayout) and self.layout.pooler

    @property
    def can_decode(self) -> bool:
        return self.lm_table is not None

    @property
    def can_encode(self) -> bool:
        return self.base_table is not None

    @property
    def always_cross_attention(self) -> bool:
        """The decoder has cross-attention whatever `add_cross_attention` says (BART family)."""
        return isinstance(self.layout, BartLayout)


# --- BERT-family tables ---------------------------------------------------------------------

def _embedding_width(c: ModelConfig, layout: BertLayout) -> int:
    return c.embedding_size if layout.embedding_size else c.hidden_size


def bert_attention(name: str, h: int) -> list[Param]:
    """A BERT-family `attention` / `crossattention` block: `self.{query,key,value}` + `output`."""
    return [*weights.linear(f"{name}.self.query", h, h),
            *weights.linear(f"{name}.self.key", h, h),
            *weights.linear(f"{name}.self.value", h, h),
            *weights.linear(f"{name}.output.dense", h, h),
            *weights.norm(f"{name}.output.LayerNorm", h)]


def bert_family_model(c: ModelConfig, arch: Architecture, pooler: bool) -> Table:
    """A BERT-family base model (`BertModel`, `RobertaModel`, `ElectraModel`, …)."""
    layout = arch.bert_layout
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
        ps += bert_attention(f"{layer}.attention", h)
        if c.add_cross_attention:
            ps += bert_attention(f"{layer}.crossattention", h)
        ps += [*weights.linear(f"{layer}.intermediate.dense", h, i),
               *weights.linear(f"{layer}.output.dense", i, h),
               *weights.norm(f"{layer}.output.LayerNorm", h)]
    if pooler:
        ps += weights.linear("pooler.dense", h, h)
    return Table(tuple(ps), ignored=(r"embeddings\.(position_ids|token_type_ids)",),
                 base_prefixes=(arch.prefix + ".",), heads=arch.heads)


def bert_family_lm(c: ModelConfig, arch: Architecture) -> Table:
    """A BERT-family causal LM: the base model (no pooler) under `prefix.` + the LM head."""
    head, p = arch.bert_layout.head, arch.prefix + "."
    h, v = c.hidden_size, c.vocab_size
    w = _embedding_width(c, arch.bert_layout) if head.width == "embedding" else h
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


# --- DistilBERT's table (an encoder) -----------------------------------------------------

def distilbert_model(c: ModelConfig, arch: Architecture, pooler: bool = False) -> Table:
    """transformers' `DistilBertModel` (encoder only; it has no pooler)."""
    h, i = c.hidden_size, c.intermediate_size
    ps = [Param("embeddings.word_embeddings.weight", (c.vocab_size, h), Role.EMBEDDING),
          Param("embeddings.position_embeddings.weight", (c.max_position_embeddings, h),
                Role.EMBEDDING),
          *weights.norm("embeddings.LayerNorm", h)]
    for n in range(c.num_hidden_layers):
        layer = f"transformer.layer.{n}"
        for proj in ("q_lin", "k_lin", "v_lin", "out_lin"):
            ps += weights.linear(f"{layer}.attention.{proj}", h, h)
        ps += [*weights.norm(f"{layer}.sa_layer_norm", h),
               *weights.linear(f"{layer}.ffn.lin1", h, i),
               *weights.linear(f"{layer}.ffn.lin2", i, h),
               *weights.norm(f"{layer}.output_layer_norm", h)]
    return Table(tuple(ps), ignored=(r"embeddings\.position_ids",),
                 base_prefixes=(arch.prefix + ".",), heads=arch.heads)


# --- GPT-2's tables -------------------------------------------------------------------------

def gpt2_model(c: ModelConfig, arch: Architecture, pooler: bool = False) -> Table:
    """transformers' `GPT2Model` (cross-attention when `c.add_cross_attention`; no pooler)."""
    h, i = c.hidden_size, c.intermediate_size
    conv = functools.partial(weights.linear, role=Role.CONV1D)
    ps = [Param("wte.weight", (c.vocab_size, h), Role.EMBEDDING),
          Param("wpe.weight", (c.max_position_embeddings, h), Role.EMBEDDING)]
    for n in range(c.num_hidden_layers):
        blk = f"h.{n}"
        ps += [*weights.norm(f"{blk}.ln_1", h), *conv(f"{blk}.attn.c_attn", h, 3 * h),
               *conv(f"{blk}.attn.c_proj", h, h), *weights.norm(f"{blk}.ln_2", h)]
        if c.add_cross_attention:
            ps += [*conv(f"{blk}.crossattention.c_attn", h, 2 * h),
                   *conv(f"{blk}.crossattention.q_attn", h, h),
                   *conv(f"{blk}.crossattention.c_proj", h, h),
                   *weights.norm(f"{blk}.ln_cross_attn", h)]
        ps += [*conv(f"{blk}.mlp.c_fc", h, i), *conv(f"{blk}.mlp.c_proj", i, h)]
    ps += weights.norm("ln_f", h)
    return Table(tuple(ps), ignored=(r"h\.\d+\.(attn|crossattention)\.(bias|masked_bias)",),
                 base_prefixes=(arch.prefix + ".",), heads=arch.heads)


def gpt2_lm_head_model(c: ModelConfig, arch: Architecture) -> Table:
    """transformers' `GPT2LMHeadModel`: `transformer.` + `lm_head` (tied to `wte`)."""
    p = arch.prefix + "."
    base = gpt2_model(c, arch).with_prefix(p)
    tied = p + "wte.weight" if c.tie_word_embeddings else None
    head = Param("lm_head.weight", (c.vocab_size, c.hidden_size), Role.LINEAR, tied_to=tied)
    return Table(base.params + (head,), ignored=base.ignored, prefix=p)


# --- BART-family tables (decoders) ----------------------------------------------------------

def bart_decoder(c: ModelConfig, arch: Architecture) -> Table:
    """A BART-family decoder (`BartDecoder`, …): embeddings, layers with `self_attn` and
    `encoder_attn`, the layout's norms."""
    layout = arch.bart_layout
    h, i, v = c.hidden_size, c.intermediate_size, c.lm_vocab_size
    ps = [Param("embed_tokens.weight", (v, h), Role.EMBEDDING),
          Param("embed_positions.weight", (c.max_position_embeddings + layout.position_offset, h),
                Role.EMBEDDING)]
    if layout.layernorm_embedding:
        ps += weights.norm("layernorm_embedding", h)
    for n in range(c.num_hidden_layers):
        layer = f"layers.{n}"
        for attn in ("self_attn", "encoder_attn"):
            for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                ps += weights.linear(f"{layer}.{attn}.{proj}", h, h)
            ps += weights.norm(f"{layer}.{attn}_layer_norm", h)
        ps += [*weights.linear(f"{layer}.fc1", h, i), *weights.linear(f"{layer}.fc2", i, h),
               *weights.norm(f"{layer}.final_layer_norm", h)]
    if layout.final_norm:
        ps += weights.norm("layer_norm", h)
    return Table(tuple(ps))


_SEQ2SEQ_HEADS = (r"(model\.)?encoder\..*", r"(model\.)?shared\.weight", r"final_logits_bias",
                  r"classification_head\..*", r"qa_outputs\..*")


def bart_causal_lm(c: ModelConfig, arch: Architecture) -> Table:
    """`{Bart,MBart,Marian,Pegasus}ForCausalLM`: the decoder under `model.decoder.` and an
    `lm_head` (no bias) tied to `embed_tokens`. Reads `*ForConditionalGeneration` / `*Model` /
    `*ForCausalLM` checkpoints: the encoder's weights are dropped (reported) and the shared
    embedding (`model.shared.weight`) stands in for `embed_tokens` when a seq2seq save stores
    it only there."""
    p = arch.prefix + "."
    base = bart_decoder(c, arch).with_prefix(p)
    tied = p + "embed_tokens.weight" if c.tie_word_embeddings else None
    head = Param("lm_head.weight", (c.lm_vocab_size, c.hidden_size), Role.LINEAR, tied_to=tied)
    return Table(base.params + (head,), prefix=p, base_prefixes=("decoder.",),
                 heads=_SEQ2SEQ_HEADS + arch.heads,
                 aliases=((r"(model\.)?shared\.weight", p + "embed_tokens.weight"),))


def causal_lm_config(config: ModelConfig) -> None:
    """What the reference's causal-LM class does to its config (BART family: a causal decoder,
    not an encoder-decoder); every backend's causal LM calls it."""
    config.is_decoder = True
    layout = architecture(config).layout
    if isinstance(layout, BartLayout) and layout.not_encoder_decoder:
        config.is_encoder_decoder = False


# --- the architectures ----------------------------------------------------------------------

_ROBERTA_HEAD = LMHead(decoder="lm_head.decoder", dense="lm_head.dense", norm="lm_head.layer_norm",
                       bias="lm_head.bias", activation="gelu")
_ROBERTA_LAYOUT = BertLayout(head=_ROBERTA_HEAD, positions=Positions.FROM_INPUT_IDS)
_ROBERTA_HEADS = (r"lm_head\..*", r"classifier\..*", r"qa_outputs\..*")
_ROBERTA_INIT = InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",
                                        r"embeddings\.position_embeddings\.weight"))
_WORD_PAD = InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",))


def _roberta_like(name: str, config_class: type[ModelConfig], cls: str, *, flax: bool,
                  tf: bool = True, prefix: str = "roberta") -> Architecture:
    return Architecture(
        name=name, model_types=(name,), config_class=config_class, family="bert",
        base_class=f"{cls}Model", lm_class=f"{cls}ForCausalLM", prefix=prefix,
        base_table=bert_family_model, lm_table=bert_family_lm, heads=_ROBERTA_HEADS,
        layout=_ROBERTA_LAYOUT, init=_ROBERTA_INIT, tf=RefNaming(prefix) if tf else None,
        flax=flax, doc=f"transformers' `{cls}Model` / `{cls}ForCausalLM`")


def _bart_like(name: str, config_class: type[ModelConfig], cls: str, layout: BartLayout, *,
               flax: bool) -> Architecture:
    sinusoidal = layout.sinusoid is not None
    return Architecture(
        name=name, model_types=(name,), config_class=config_class, family="bart",
        base_class=None, lm_class=f"{cls}ForCausalLM", prefix="model.decoder", base_table=None,
        lm_table=bart_causal_lm, layout=layout,
        init=InitRules(padding_rows=(r"embed_tokens\.weight",),
                       sinusoidal=r"embed_positions\.weight" if sinusoidal else None,
                       sinusoid=layout.sinusoid or Sinusoid.INTERLEAVED,
                       always_sinusoidal=sinusoidal),
        flax=flax, doc=f"transformers' `{cls}ForCausalLM` (decoder only; warm-starts from "
                       f"`{cls}ForConditionalGeneration` / `{cls}Model` checkpoints)")


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
    _roberta_like("data2vec-text", Data2VecTextConfig, "Data2VecText", flax=False, tf=False,
                  prefix="data2vec_text"),  # no TF or Flax class
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
        base_table=distilbert_model, lm_table=None,
        heads=(r"vocab_transform\..*", r"vocab_layer_norm\..*", r"vocab_projector\..*",
               r"pre_classifier\..*", r"classifier\..*", r"qa_outputs\..*"),
        init=InitRules(padding_rows=(r"embeddings\.word_embeddings\.weight",),
                       sinusoidal=r"embeddings\.position_embeddings\.weight"),
        tf=RefNaming("distilbert"), flax=True,
        doc="transformers' `DistilBertModel` (encoder only)"),
    Architecture(
        name="gpt2", model_types=("gpt2",), config_class=GPT2Config, family="gpt2",
        base_class="GPT2Model", lm_class="GPT2LMHeadModel", prefix="transformer",
        base_table=gpt2_model, lm_table=gpt2_lm_head_model, heads=(r"lm_head\..*",),
        init=InitRules(scaled=(r"c_proj\.weight",)), tf=RefNaming("transformer"), flax=True,
        doc="transformers' `GPT2Model` / `GPT2LMHeadModel`"),
    _bart_like("bart", BartConfig, "Bart", BartLayout(), flax=True),
    _bart_like("mbart", MBartConfig, "MBart", BartLayout(pre_norm=True, final_norm=True),
               flax=False),
    _bart_like("marian", MarianConfig, "Marian",
               BartLayout(position_offset=0, sinusoid=Sinusoid.HALVES, layernorm_embedding=False,
                          scale_inputs_embeds=True), flax=False),
    _bart_like("pegasus", PegasusConfig, "Pegasus",
               BartLayout(position_offset=0, sinusoid=Sinusoid.HALVES, pre_norm=True,
                          final_norm=True, layernorm_embedding=False, scale_inputs_embeds=True,
                          not_encoder_decoder=False),
               flax=False),
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
    """The encoder's table (a clear error for a decoder-only architecture)."""
    return architecture(c).encoder_table(c, pooler)


def decoder_table(c: ModelConfig) -> Table:
    """The decoder's table (a clear error for an encoder-only architecture)."""
    arch = architecture(c)
    arch.require_decoder()
    if not (c.is_decoder and c.add_cross_attention):
        raise CheckpointError(f"decoder config ({c.model_type}): needs is_decoder=True and "
                              "add_cross_attention=True to serve as a decoder")
    return arch.decoder_table(c)


def encoder_decoder_table(c: EncoderDecoderConfig) -> Table:
    """transformers' `EncoderDecoderModel`: `encoder.` + `decoder.` (+ `enc_to_dec_proj`)."""
    enc, dec = encoder_table(c.encoder).with_prefix("encoder."), \
        decoder_table(c.decoder).with_prefix("decoder.")
    ps = list(enc.params + dec.params)
    if weights.has_enc_to_dec_proj(c):
        ps += weights.linear("enc_to_dec_proj", c.encoder.hidden_size, c.decoder.hidden_size)
    if c.tie_encoder_decoder:
        ps = _tie_encoder_decoder(ps, decoder_table(c.decoder).prefix)
    return Table(tuple(ps), ignored=enc.ignored + dec.ignored)


def _tie_encoder_decoder(ps: list[Param], dec_prefix: str) -> list[Param]:
    """As the reference's `tie_encoder_decoder`: decoder base weights share the encoder's."""
    names = {p.name for p in ps}
    out = []
    for p in ps:
        src = "encoder." + p.name.removeprefix("decoder." + dec_prefix)
        shared = p.name.startswith("decoder." + dec_prefix) and src in names
        out.append(Param(p.name, p.shape, p.role, src, stored=True)
                   if shared and p.tied_to is None else p)
    return out


# --- positions --------------------------------------------------------------------------------

def _from_input_ids(arch: Architecture) -> bool:
    return isinstance(arch.layout, BertLayout) and arch.layout.positions is Positions.FROM_INPUT_IDS


def embedding_width(c: ModelConfig) -> int:
    """The width of the token embeddings (what `inputs_embeds` must have): ELECTRA's
    `embedding_size`, else `hidden_size`."""
    layout = architecture(c).layout
    return _embedding_width(c, layout) if isinstance(layout, BertLayout) else c.hidden_size


def position_offset(c: ModelConfig) -> int:
    """The row of the position table the first token reads (RoBERTa: `pad_token_id + 1`;
    BART, mBART: 2; else 0)."""
    arch = architecture(c)
    if _from_input_ids(arch):
        if c.pad_token_id is None:
            raise ConfigError(f"{arch.name} positions start at pad_token_id + 1, but the config's "
                              "pad_token_id is None")
        return c.pad_token_id + 1
    if isinstance(arch.layout, BartLayout):
        return arch.layout.position_offset
    return 0


def max_positions(c: ModelConfig) -> int:
    """How many tokens (past included) the position table serves (BART's table has
    `max_position_embeddings + 2` rows: it serves `max_position_embeddings`)."""
    if isinstance(architecture(c).layout, BartLayout):
        return c.max_position_embeddings
    return c.max_position_embeddings - position_offset(c)


def check_length(c: ModelConfig, argument: str, length: int, past: int = 0) -> None:
    """Refuse `length` new tokens after `past` ones beyond the position table (every backend
    calls this on the host, from static shapes, before any gather or compiled code)."""
    limit = max_positions(c)
    if past + length > limit:
        offset = position_offset(c)
        held = f"{length} tokens" + (f" after {past} cached ones" if past else "")
        table = f"max_position_embeddings={c.max_position_embeddings}" + \
            (f" minus the offset {offset}" if offset and limit < c.max_position_embeddings
             else "")
        raise ValueError(f"{argument} has {held}; the {c.model_type} position table serves "
                         f"{limit} ({table})")


def position_ids(c: ModelConfig, input_ids: np.ndarray, past_length: int = 0) -> np.ndarray:
    """The reference's default position ids for `input_ids` (B, T) after `past_length` tokens
    (numpy; each backend writes the same rule in its own ops). BART's learned table adds its
    offset inside the embedding, as the reference's does: its ids are `past + arange(T)`."""
    input_ids = np.asarray(input_ids)
    if _from_input_ids(architecture(c)):
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
    sinusoidal = _at_dot(rules.sinusoidal) if rules.sinusoidal and (
        rules.always_sinusoidal or getattr(config, "sinusoidal_pos_embds", False)) else None
    for p in table.owned:
        if names is not None and p.name not in names:
            continue
        if sinusoidal is not None and sinusoidal.search(p.name):
            n_pos, dim = p.shape
            yield p, Init("array", array=sinusoidal_table(n_pos, dim, rules.sinusoid))
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


def sinusoidal_table(n_pos: int, dim: int,
                     layout: Sinusoid = Sinusoid.INTERLEAVED) -> np.ndarray:
    """The reference's sinusoidal position tables, float32: DistilBERT's
    `create_sinusoidal_embeddings` (interleaved) or Marian's / Pegasus's `create_weight`
    (sines in the first half, cosines in the second)."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    j = np.arange(dim, dtype=np.float64)[None, :]
    enc = pos / np.power(10000, 2 * (j // 2) / dim)
    out = np.zeros((n_pos, dim), np.float32)
    if layout is Sinusoid.HALVES:
        half = (dim + 1) // 2
        out[:, :half] = np.sin(enc[:, 0::2])
        out[:, half:] = np.cos(enc[:, 1::2])
    else:
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
    else:
        arch.require_encoder()
    cls = families[arch.family][decoder]
    assert cls is not None, f"the backend has no {arch.family} causal LM class"
    return cls


def support_matrix() -> list[tuple[str, str, bool]]:
    """(encoder model_type, decoder model_type, supported) for every pair, for the docs."""
    return [(e.name, d.name, e.can_encode and d.can_decode) for e in ARCHITECTURES
            for d in ARCHITECTURES]
