"""The BART family's decoder in PyTorch: `BartDecoder` and `BartForCausalLM`, serving every
architecture whose registry entry has family "bart" (BART, mBART, Marian, Pegasus) from its
`BartLayout`: learned positions read at `position + offset` or a fixed sinusoidal table (a
checkpoint tensor like any other, frozen as the reference's), post-norm layers (BART, Marian:
LN(x + sublayer(x))) or pre-norm ones (mBART, Pegasus: x + sublayer(LN(x))) with a final
`layer_norm`, `layernorm_embedding`, and the embedding scale applied inside the lookup (BART,
mBART) or after it, to caller-given `inputs_embeds` too (Marian, Pegasus). Follows
transformers' `modeling_{bart,mbart,marian,pegasus}.py` (`*Decoder`, `*DecoderLayer`,
`*ForCausalLM`): positions `past + arange(T)` regardless of padding, dropout on the hidden
states, `attention_dropout` on the probabilities, `activation_dropout` after the FFN's
activation, `decoder_layerdrop` (training only: a layer is skipped with that probability).

Attribute names reproduce the reference's state-dict names
(`model.decoder.layers.0.self_attn.q_proj`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from encdec.core import weights
from encdec.core.config import BartConfig, ModelConfig
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    BART_ATTENTION,
    architecture,
    bart_decoder,
    causal_lm_config,
    check_length,
    position_offset,
)

from . import params
from .base import CausalLM
from .layers import (
    ACTIVATIONS,
    Attention,
    Container,
    Derived,
    Mask,
    Past,
    causal_mask,
    cross_entropy,
    padding_mask,
    split_past,
    step_masks,
)


class BartDecoderLayer(nn.Module):
    """`self_attn`, `encoder_attn` (each with its `*_layer_norm`), `fc1` -> act -> `fc2` with
    `final_layer_norm`; post-norm or pre-norm as the layout says."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        h, n, eps = c.hidden_size, c.num_attention_heads, c.layer_norm_eps
        self.pre_norm = architecture(c).layout.pre_norm
        self.dropout = nn.Dropout(c.dropout)
        self.activation_dropout = nn.Dropout(c.activation_dropout)
        self.act = ACTIVATIONS[c.activation]
        self.self_attn = Attention(h, n, BART_ATTENTION, cross=False, dropout=c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(h, eps=eps)
        self.encoder_attn = Attention(h, n, BART_ATTENTION, cross=True,
                                      dropout=c.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(h, eps=eps)
        self.fc1 = nn.Linear(h, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, h)
        self.final_layer_norm = nn.LayerNorm(h, eps=eps)

    def _normed(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        """A sublayer's input: LN(x) in a pre-norm layer, else x."""
        return norm(x) if self.pre_norm else x

    def _residual(self, x: Tensor, out: Tensor, norm: nn.LayerNorm) -> Tensor:
        """x + dropout(out), then LN in a post-norm layer."""
        x = x + self.dropout(out)
        return x if self.pre_norm else norm(x)

    def _mlp(self, x: Tensor) -> Tensor:
        ln = self.final_layer_norm
        h = self.activation_dropout(self.act(self.fc1(self._normed(x, ln))))
        return self._residual(x, self.fc2(h), ln)

    def forward(self, x: Tensor, mask: Mask | None, states: Tensor | None,
                cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        ln = self.self_attn_layer_norm
        a, probs, present = self.self_attn(self._normed(x, ln), mask, past=self_past,
                                           output_attentions=output_attentions)
        x = self._residual(x, a, ln)
        cross_probs = None
        if states is not None:
            ln = self.encoder_attn_layer_norm
            a, cross_probs, ckv = self.encoder_attn(self._normed(x, ln), cross_mask,
                                                    states=states, past=cross_past,
                                                    output_attentions=output_attentions)
            x = self._residual(x, a, ln)
            present = present + ckv
        return self._mlp(x), probs, cross_probs, present

    def step(self, x: Tensor, cache: tuple[Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        ln = self.self_attn_layer_norm
        a, k_buf, v_buf = self.self_attn.step_self(self._normed(x, ln), k_buf, v_buf,
                                                   cache_index, mask)
        x = self._residual(x, a, ln)
        ln = self.encoder_attn_layer_norm
        x = self._residual(x, self.encoder_attn.step_cross(self._normed(x, ln), ck, cv,
                                                           cross_mask), ln)
        return self._mlp(x), (k_buf, v_buf, ck, cv)


class BartDecoder(nn.Module):
    """transformers' `BartDecoder` / `MBartDecoder` / `MarianDecoder` / `PegasusDecoder` (what
    `BartForCausalLM.model.decoder` is): token and position embeddings, the layers, the
    layout's norms. Always causal, always with `encoder_attn` (used when encoder states are
    given)."""

    config_class = BartConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        layout = architecture(config).layout
        h = config.hidden_size
        self.config = config
        self.layout = layout
        self.offset = position_offset(config)
        self.layerdrop = config.decoder_layerdrop
        self.gradient_checkpointing = False
        self._cross_mask = Derived()  # decoding steps' cross-attention mask, built once
        with params.constructing() as c:
            self.embed_tokens = nn.Embedding(config.lm_vocab_size, h)
            self.embed_positions = nn.Embedding(config.max_position_embeddings + self.offset, h)
            self.dropout = nn.Dropout(config.dropout)
            if layout.sinusoid is not None:  # a fixed table: no gradient, as the reference's
                self.embed_positions.weight.requires_grad_(False)
            self.layernorm_embedding = nn.LayerNorm(h, eps=config.layer_norm_eps) \
                if layout.layernorm_embedding else None
            self.layers = nn.ModuleList(BartDecoderLayer(config)
                                        for _ in range(config.num_hidden_layers))
            self.layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps) \
                if layout.final_norm else None
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> weights.Table:
        return bart_decoder(self.config, architecture(self.config))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def embed(self, input_ids: Tensor | None, position_ids: Tensor | None,
              inputs_embeds: Tensor | None, past: int | Tensor) -> Tensor:
        """Embeddings (B, T, hidden): scaled tokens + positions (default `past + arange(T)`,
        read at `+ offset`), `layernorm_embedding`, dropout."""
        scale = self.config.embed_scale
        if inputs_embeds is None:
            x = self.embed_tokens(input_ids) * scale  # (B, T, H)
        else:
            x = inputs_embeds * scale if self.layout.scale_inputs_embeds else inputs_embeds
        if position_ids is None:
            position_ids = (torch.arange(x.shape[1], device=x.device) + past)[None]  # (1, T)
        x = x + self.embed_positions(position_ids + self.offset)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def _final(self, x: Tensor) -> Tensor:
        return x if self.layer_norm is None else self.layer_norm(x)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `BartDecoder.forward`; `past_key_values` in the legacy tuple
        format (per layer `(k, v)`, plus `(ck, cv)` with encoder states)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        c = self.config
        use_cache = c.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_length(c, "input_ids" if input_ids is not None else "inputs_embeds", T, past_len)
        x = self.embed(input_ids, position_ids, inputs_embeds, past_len)
        mask = causal_mask(B, T, past_len, past_len + T, x.dtype, attention_mask, x.device)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        layerdrop = self.layerdrop if self.training else 0.0
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, layer in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[i]
            if layerdrop > 0.0 and torch.rand([]) < layerdrop:  # LayerDrop: skip this layer
                presents.append(past)
                continue
            hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, p, cp, present = checkpoint(layer, x, mask, encoder_hidden_states, cross_mask,
                                               past, output_attentions, use_reentrant=False)
            else:
                x, p, cp, present = layer(x, mask, encoder_hidden_states, cross_mask, past,
                                          output_attentions)
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        x = self._final(x)
        hidden.append(x)
        out = BaseModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns)
            if output_attentions and encoder_hidden_states is not None else None)
        return out if return_dict else out.to_tuple()

    def cross_kv(self, encoder_hidden_states: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        """Cross-attention keys/values (Be, h, S, d) of every layer, computed once."""
        return tuple(layer.encoder_attn.project_kv(encoder_hidden_states) for layer in self.layers)

    def step(self, input_ids: Tensor, cache: tuple, cache_index,
             encoder_attention_mask: Tensor | None,
             decoder_attention_mask: Tensor | None = None) -> tuple[Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        if isinstance(cache_index, int):  # a tensor index: the cache's size was checked
            check_length(self.config, "input_ids", T, cache_index)
        x = self.embed(input_ids, None, None, cache_index)
        mask, cross_mask = step_masks(self._cross_mask, B, T, cache_index, max_len, x.dtype,
                                      decoder_attention_mask, encoder_attention_mask,
                                      input_ids.device)
        new = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return self._final(x), tuple(new)


class BartForCausalLM(CausalLM):
    """transformers' `{Bart,MBart,Marian,Pegasus}ForCausalLM`: `model.decoder` (the
    `BartDecoder`) + `lm_head` (no bias, tied to `embed_tokens`). Its `labels` loss is the
    reference's: NOT shifted (`labels[:, i]` is the target of `logits[:, i]`)."""

    config_class = BartConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        causal_lm_config(config)
        self.config = config
        with params.constructing() as c:
            self.model = Container()  # the reference's `BartDecoderWrapper`: holds `decoder`
            self.model.decoder = BartDecoder(config)
            self.lm_head = nn.Linear(config.hidden_size, config.lm_vocab_size, bias=False)
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> BartDecoder:
        return self.model.decoder

    def logits(self, hidden: Tensor) -> Tensor:
        """The LM head: hidden (B, T, H) -> logits (B, T, V)."""
        return self.lm_head(hidden)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None, labels: Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> CausalLMOutput | tuple:
        """As the reference; `labels` (B, T) are the targets of the same positions (mean
        cross-entropy ignoring -100, no shift)."""
        out = self.model.decoder(input_ids, attention_mask, position_ids, inputs_embeds,
                                 encoder_hidden_states, encoder_attention_mask, past_key_values,
                                 use_cache, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else cross_entropy(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()
