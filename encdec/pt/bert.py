"""The BERT family in PyTorch: `BertModel` (encoder, or causal decoder with cross-attention) and
`BertLMHeadModel`, serving every architecture whose registry entry has family "bert" (BERT,
RoBERTa, XLM-R, CamemBERT, ELECTRA, BertGeneration) from its `BertLayout`: token types or none,
positions by arange or RoBERTa's rule from the input ids, ELECTRA's `embeddings_project`, and
the LM head's modules at the reference's names. Follows transformers' `modeling_bert.py` and
its copies (post-LayerNorm blocks, exact erf GELU, positions offset by the cache length).

Attribute names reproduce the reference's state-dict names (`encoder.layer.0.attention.self.query`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

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
    Derived,
    Mask,
    Past,
    causal_lm_loss,
    causal_mask,
    padding_mask,
    split_past,
    step_masks,
)


def _embedding_width(c: ModelConfig) -> int:
    return c.embedding_size if architecture(c).layout.embedding_size else c.hidden_size


class BertEmbeddings(nn.Module):
    """word + [token type +] position embeddings, LayerNorm, dropout (width `embedding_size`
    for ELECTRA)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        layout, e = architecture(c).layout, _embedding_width(c)
        self.word_embeddings = nn.Embedding(c.vocab_size, e)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, e) \
            if layout.token_types else None
        self.LayerNorm = nn.LayerNorm(e, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: Tensor | None, token_type_ids: Tensor | None,
                position_ids: Tensor, inputs_embeds: Tensor | None) -> Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this architecture has no token type "
                             "embeddings (its registry layout has token_types=False)")
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))


def default_position_ids(config: ModelConfig, input_ids: Tensor | None, length: int,
                         past: int | Tensor, device: torch.device) -> Tensor:
    """The reference's default positions ((1|B, T), `encdec.core.registry.position_ids`):
    past + arange(T); RoBERTa's pad + (cumsum(ids != pad) + past) * (ids != pad), or
    arange(pad + 1, T + pad + 1) for inputs_embeds."""
    if architecture(config).layout.positions is Positions.FROM_INPUT_IDS:
        pad = config.pad_token_id
        if input_ids is None:
            return torch.arange(pad + 1, length + pad + 1, device=device)[None]
        keep = (input_ids != pad).long()  # (B, T)
        return (torch.cumsum(keep, dim=1) + past) * keep + pad
    return (torch.arange(length, device=device) + past)[None]  # (1, T)


class BertOutput(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual): `attention.output` and the FFN's `output`."""

    def __init__(self, c: ModelConfig, n_in: int):
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    """`attention` / `crossattention`: `self` (the `Attention`) + `output` (dense, LayerNorm)."""

    def __init__(self, c: ModelConfig, cross: bool):
        super().__init__()
        self.self = Attention(c.hidden_size, c.num_attention_heads, BERT_ATTENTION, cross=cross,
                              dropout=c.attention_probs_dropout_prob)
        self.output = BertOutput(c, c.hidden_size)


class BertIntermediate(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.attention = BertAttention(c, cross=False)
        self.crossattention = BertAttention(c, cross=True) if c.add_cross_attention else None
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c, c.intermediate_size)

    def forward(self, x: Tensor, mask: Mask | None, states: Tensor | None,
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

    def step(self, x: Tensor, cache: tuple[Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attention.self.step_self(x, k_buf, v_buf, cache_index, mask)
        x = self.attention.output(a, x)
        a = self.crossattention.self.step_cross(x, ck, cv, cross_mask)
        x = self.crossattention.output(a, x)
        return self.output(self.intermediate(x), x), (k_buf, v_buf, ck, cv)


class BertEncoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))


class BertPooler(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # first token


class BertModel(PretrainedModel):
    """transformers' `BertModel` and its family's base models (`RobertaModel`, `ElectraModel`,
    `BertGenerationEncoder`, …): bidirectional encoder, or (`config.is_decoder`) a causal
    decoder with cross-attention when `config.add_cross_attention`."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig, add_pooling_layer: bool | None = None):
        super().__init__()
        arch = architecture(config)
        self.config = config
        self.add_pooling_layer = arch.has_pooler if add_pooling_layer is None \
            else add_pooling_layer
        self.gradient_checkpointing = False
        self._cross_mask = Derived()  # decoding steps' cross-attention mask, built once
        e = _embedding_width(config)
        with params.constructing() as c:
            self.embeddings = BertEmbeddings(config)
            self.embeddings_project = nn.Linear(e, config.hidden_size) \
                if e != config.hidden_size else None
            self.encoder = BertEncoder(config)
            self.pooler = BertPooler(config) if self.add_pooling_layer else None
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config, self.add_pooling_layer)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def embed(self, input_ids: Tensor | None, token_type_ids: Tensor | None,
              position_ids: Tensor | None, inputs_embeds: Tensor | None,
              past: int | Tensor) -> Tensor:
        """Embeddings (B, T, hidden): default positions after `past` tokens, projected to the
        hidden size when the embeddings are narrower (ELECTRA)."""
        ref = input_ids if input_ids is not None else inputs_embeds
        if position_ids is None:
            position_ids = default_position_ids(self.config, input_ids, ref.shape[1], past,
                                                ref.device)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        return x if self.embeddings_project is None else self.embeddings_project(x)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `BertModel.forward`; `past_key_values` in the legacy tuple format."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = (c.use_cache if use_cache is None else use_cache) and c.is_decoder
        if self.gradient_checkpointing and self.training:
            use_cache = False
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_length(c, "input_ids" if input_ids is not None else "inputs_embeds", T, past_len)
        x = self.embed(input_ids, token_type_ids, position_ids, inputs_embeds, past_len)
        dtype, device = x.dtype, x.device
        if c.is_decoder:
            mask = causal_mask(B, T, past_len, past_len + T, dtype, attention_mask, device)
        else:
            mask = padding_mask(attention_mask, dtype)
        cross_mask = padding_mask(encoder_attention_mask, dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.encoder.layer):
            hidden.append(x)
            past = None if past_key_values is None else past_key_values[i]
            if self.gradient_checkpointing and self.training:
                x, p, cp, present = checkpoint(layer, x, mask, encoder_hidden_states, cross_mask,
                                               past, output_attentions, use_reentrant=False)
            else:
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

    def cross_kv(self, encoder_hidden_states: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.crossattention.self.project_kv(encoder_hidden_states)
                     for layer in self.encoder.layer)

    def step(self, input_ids: Tensor, cache: tuple, cache_index,
             encoder_attention_mask: Tensor | None,
             decoder_attention_mask: Tensor | None = None) -> tuple[Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) after cache_index tokens, positions by
        the architecture's rule with the cache length `cache_index`."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        if isinstance(cache_index, int):  # a tensor index: the cache's size was checked
            check_length(self.config, "input_ids", T, cache_index)
        x = self.embed(input_ids, None, None, None, cache_index)
        mask, cross_mask = step_masks(self._cross_mask, B, T, cache_index, max_len, x.dtype,
                                      decoder_attention_mask, encoder_attention_mask,
                                      input_ids.device)
        new = []
        for layer, layer_cache in zip(self.encoder.layer, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return x, tuple(new)



def _place(root: nn.Module, dotted: str, value: nn.Module | nn.Parameter) -> None:
    """Set `root.a.b.c = value`, creating `Container` modules along the path."""
    *path, leaf = dotted.split(".")
    for name in path:
        if name not in root._modules:
            root.add_module(name, Container())
        root = root._modules[name]
    setattr(root, leaf, value)


class BertLMHeadModel(CausalLM):
    """transformers' `BertLMHeadModel` and its family's causal LMs (`RobertaForCausalLM`,
    `ElectraForCausalLM`, `BertGenerationDecoder`, …): the base model (no pooler) under the
    architecture's prefix and the LM head's modules at the names of `layout.head`
    ([dense -> activation -> LayerNorm ->] decoder), whose decoder weight is the word
    embedding matrix when `tie_word_embeddings`."""

    config_class = BertConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        arch = architecture(config)
        head, v = arch.layout.head, config.vocab_size
        w = _embedding_width(config) if head.width == "embedding" else config.hidden_size
        self.config = config
        self.prefix = arch.prefix
        self.head = head
        self.act = ACTIVATIONS[head.activation or config.hidden_act]
        with params.constructing() as c:
            setattr(self, arch.prefix, BertModel(config, add_pooling_layer=False))
            if head.dense:
                _place(self, head.dense, nn.Linear(config.hidden_size, w))
            if head.norm:
                _place(self, head.norm, nn.LayerNorm(w, eps=config.layer_norm_eps))
            _place(self, head.decoder, nn.Linear(w, v))
            if head.bias:  # the vocabulary bias the decoder's bias is tied to
                _place(self, head.bias, nn.Parameter(torch.empty(v)))
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> BertModel:
        return getattr(self, self.prefix)

    def logits(self, hidden: Tensor) -> Tensor:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        x = hidden
        if self.head.dense:
            x = self.act(self.get_submodule(self.head.dense)(x))
        if self.head.norm:
            x = self.get_submodule(self.head.norm)(x)
        return self.get_submodule(self.head.decoder)(x)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None, labels: Tensor | None = None,
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
