"""GPT-2 in PyTorch: `GPT2Model` (with cross-attention when `config.add_cross_attention`) and
`GPT2LMHeadModel`, following transformers' `modeling_gpt2.py` (pre-LayerNorm blocks, Conv1D
weights `(in, out)`, `gelu_new`, positions `past_length + arange(T)` regardless of padding,
final `ln_f`, `lm_head` tied to `wte`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from encdec.core import weights
from encdec.core.config import GPT2Config
from encdec.core.outputs import BaseModelOutput, CausalLMOutput
from encdec.core.registry import (
    GPT2_CROSS_ATTENTION,
    GPT2_SELF_ATTENTION,
    architecture,
    check_length,
)

from . import params
from .base import CausalLM, PretrainedModel
from .layers import (
    ACTIVATIONS,
    Attention,
    Conv1D,
    Derived,
    Mask,
    Past,
    causal_lm_loss,
    causal_mask,
    padding_mask,
    split_past,
    step_masks,
)


class GPT2MLP(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(c.hidden_size, c.intermediate_size)
        self.c_proj = Conv1D(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.activation_function]
        self.dropout = nn.Dropout(c.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        h, eps = c.hidden_size, c.layer_norm_epsilon
        scale = (c.hidden_size // c.num_attention_heads) ** -0.5 if c.scale_attn_weights else 1.0
        kw = dict(dropout=c.attn_pdrop, resid_dropout=c.resid_pdrop, scale=scale)
        n = c.num_attention_heads
        self.ln_1 = nn.LayerNorm(h, eps=eps)
        self.attn = Attention(h, n, GPT2_SELF_ATTENTION, cross=False, **kw)
        self.ln_2 = nn.LayerNorm(h, eps=eps)
        cross = c.add_cross_attention
        self.crossattention = Attention(h, n, GPT2_CROSS_ATTENTION, cross=True, **kw) \
            if cross else None
        self.ln_cross_attn = nn.LayerNorm(h, eps=eps) if cross else None
        self.mlp = GPT2MLP(c)

    def forward(self, x: Tensor, mask: Mask | None, states: Tensor | None,
                cross_mask: Mask | None, past: Past | None, output_attentions: bool = False):
        """-> (x, self probs, cross probs, present (k, v[, ck, cv]))."""
        self_past, cross_past = split_past(past)
        a, probs, kv = self.attn(self.ln_1(x), mask, past=self_past,
                                 output_attentions=output_attentions)
        x = x + a
        cross_probs, present = None, kv
        if states is not None:
            if self.crossattention is None:
                raise ValueError("encoder_hidden_states given, but this GPT-2 has no "
                                 "cross-attention: set config.add_cross_attention=True")
            a, cross_probs, ckv = self.crossattention(
                self.ln_cross_attn(x), cross_mask, states=states, past=cross_past,
                output_attentions=output_attentions)
            x = x + a
            present = kv + ckv
        return x + self.mlp(self.ln_2(x)), probs, cross_probs, present

    def step(self, x: Tensor, cache: tuple[Tensor, ...], cache_index, mask: Mask,
             cross_mask: Mask | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Static-cache step; cache = (k_buf, v_buf, cross_k, cross_v)."""
        k_buf, v_buf, ck, cv = cache
        a, k_buf, v_buf = self.attn.step_self(self.ln_1(x), k_buf, v_buf, cache_index, mask)
        x = x + a
        x = x + self.crossattention.step_cross(self.ln_cross_attn(x), ck, cv, cross_mask)
        return x + self.mlp(self.ln_2(x)), (k_buf, v_buf, ck, cv)


class GPT2Model(PretrainedModel):
    """transformers' `GPT2Model`."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config):
        super().__init__()
        config.check_supported()
        self.config = config
        self.gradient_checkpointing = False
        self._cross_mask = Derived()  # decoding steps' cross-attention mask, built once
        with params.constructing() as c:
            self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.drop = nn.Dropout(config.embd_pdrop)
            self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.num_hidden_layers))
            self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `GPT2Model.forward` (always causal); `past_key_values` in the
        legacy tuple format."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        check_length(self.config, "input_ids" if input_ids is not None else "inputs_embeds", T,
                     past_len)
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        if position_ids is None:
            position_ids = (torch.arange(T, device=x.device) + past_len)[None]  # (1, T)
        x = x + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        mask = causal_mask(B, T, past_len, past_len + T, x.dtype, attention_mask, x.device)
        cross_mask = padding_mask(encoder_attention_mask, x.dtype) \
            if encoder_hidden_states is not None else None
        hidden, attns, cross_attns, presents = [], [], [], []
        for i, block in enumerate(self.h):
            hidden.append(x)
            past = None if past_key_values is None else past_key_values[i]
            if self.gradient_checkpointing and self.training:
                x, p, cp, present = checkpoint(block, x, mask, encoder_hidden_states, cross_mask,
                                               past, output_attentions, use_reentrant=False)
            else:
                x, p, cp, present = block(x, mask, encoder_hidden_states, cross_mask, past,
                                          output_attentions)
            attns.append(p)
            cross_attns.append(cp)
            presents.append(present)
        x = self.ln_f(x)
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
        """Cross-attention keys/values (Be, h, S, d) of every block, computed once."""
        return tuple(block.crossattention.project_kv(encoder_hidden_states) for block in self.h)

    def step(self, input_ids: Tensor, cache: tuple, cache_index,
             encoder_attention_mask: Tensor | None,
             decoder_attention_mask: Tensor | None = None) -> tuple[Tensor, tuple]:
        """Static-cache decoding step: input_ids (B, T) at positions cache_index + arange(T)."""
        B, T = input_ids.shape
        max_len = cache[0][0].shape[2]
        if isinstance(cache_index, int):  # a tensor index: the cache's size was checked
            check_length(self.config, "input_ids", T, cache_index)
        position_ids = (torch.arange(T, device=input_ids.device) + cache_index)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)  # (B, T, H)
        mask, cross_mask = step_masks(self._cross_mask, B, T, cache_index, max_len, x.dtype,
                                      decoder_attention_mask, encoder_attention_mask,
                                      input_ids.device)
        new = []
        for block, layer_cache in zip(self.h, cache, strict=True):
            x, layer_cache = block.step(x, layer_cache, cache_index, mask, cross_mask)
            new.append(layer_cache)
        return self.ln_f(x), tuple(new)



class GPT2LMHeadModel(CausalLM):
    """transformers' `GPT2LMHeadModel`: `transformer` + `lm_head` (no bias, tied to `wte`)."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        with params.constructing() as c:
            self.transformer = GPT2Model(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    @property
    def base_model(self) -> GPT2Model:
        return self.transformer

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                inputs_embeds: Tensor | None = None, encoder_hidden_states: Tensor | None = None,
                encoder_attention_mask: Tensor | None = None, labels: Tensor | None = None,
                past_key_values: tuple[Past, ...] | None = None, use_cache: bool | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> CausalLMOutput | tuple:
        """As the reference; `labels` give the shifted next-token loss (ignoring -100)."""
        out = self.transformer(input_ids, attention_mask, token_type_ids, position_ids,
                               inputs_embeds, encoder_hidden_states, encoder_attention_mask,
                               past_key_values, use_cache, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        result = CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                hidden_states=out.hidden_states, attentions=out.attentions,
                                cross_attentions=out.cross_attentions)
        return result if return_dict else result.to_tuple()
