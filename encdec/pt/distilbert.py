"""DistilBERT in PyTorch: `DistilBertModel`, an encoder only (the reference has no causal LM),
following transformers' `modeling_distilbert.py` (word + position embeddings without token
types, post-LayerNorm blocks with `q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`,
`ffn.lin1`/`lin2`, `output_layer_norm`, LayerNorm eps 1e-12, activation `config.activation`).

Attribute names reproduce the reference's state-dict names (`transformer.layer.0.attention.q_lin`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from encdec.core import weights
from encdec.core.config import DistilBertConfig
from encdec.core.outputs import BaseModelOutput
from encdec.core.registry import DISTILBERT_ATTENTION, architecture, check_length

from . import params
from .base import PretrainedModel
from .layers import ACTIVATIONS, Attention, Mask, padding_mask


class DistilBertEmbeddings(nn.Module):
    """word + position embeddings (positions arange(T)), LayerNorm, dropout."""

    def __init__(self, c: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, input_ids: Tensor | None, position_ids: Tensor,
                inputs_embeds: Tensor | None) -> Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        return self.dropout(self.LayerNorm(x + self.position_embeddings(position_ids)))


class DistilBertFFN(nn.Module):
    """`ffn`: lin1 -> activation -> lin2 -> dropout."""

    def __init__(self, c: DistilBertConfig):
        super().__init__()
        self.lin1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.lin2 = nn.Linear(c.intermediate_size, c.hidden_size)
        self.act = ACTIVATIONS[c.activation]
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.lin2(self.act(self.lin1(x))))


class DistilBertLayer(nn.Module):
    """The reference's `TransformerBlock`: attention (with its `out_lin`) -> `sa_layer_norm`
    (+ residual) -> `ffn` -> `output_layer_norm` (+ residual)."""

    def __init__(self, c: DistilBertConfig):
        super().__init__()
        h = c.hidden_size
        self.attention = Attention(h, c.num_attention_heads, DISTILBERT_ATTENTION, cross=False,
                                   dropout=c.attention_dropout)
        self.sa_layer_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.ffn = DistilBertFFN(c)
        self.output_layer_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)

    def forward(self, x: Tensor, mask: Mask | None, output_attentions: bool = False):
        """-> (x, attention probs or None)."""
        a, probs, _ = self.attention(x, mask, output_attentions=output_attentions)
        x = self.sa_layer_norm(a + x)
        return self.output_layer_norm(self.ffn(x) + x), probs


class DistilBertTransformer(nn.Module):
    def __init__(self, c: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(DistilBertLayer(c) for _ in range(c.num_hidden_layers))


class DistilBertModel(PretrainedModel):
    """transformers' `DistilBertModel`: a bidirectional encoder."""

    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        with params.constructing() as c:
            self.embeddings = DistilBertEmbeddings(config)
            self.transformer = DistilBertTransformer(config)
        if c.outermost:
            params.materialize(self, [(self, self.table(), config)])

    def table(self) -> weights.Table:
        return architecture(self.config).encoder_table(self.config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None, position_ids: Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                return_dict: bool = True) -> BaseModelOutput | tuple:
        """As the reference's `DistilBertModel.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        ref = input_ids if input_ids is not None else inputs_embeds
        T = ref.shape[1]
        check_length(self.config, "input_ids" if input_ids is not None else "inputs_embeds", T)
        if position_ids is None:
            position_ids = torch.arange(T, device=ref.device)[None]  # (1, T)
        x = self.embeddings(input_ids, position_ids, inputs_embeds)  # (B, T, H)
        mask = padding_mask(attention_mask, x.dtype)
        hidden, attns = [], []
        for layer in self.transformer.layer:
            hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, p = checkpoint(layer, x, mask, output_attentions, use_reentrant=False)
            else:
                x, p = layer(x, mask, output_attentions)
            attns.append(p)
        hidden.append(x)
        out = BaseModelOutput(last_hidden_state=x,
                              hidden_states=tuple(hidden) if output_hidden_states else None,
                              attentions=tuple(attns) if output_attentions else None)
        return out if return_dict else out.to_tuple()
