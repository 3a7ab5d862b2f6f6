"""`EncoderDecoderModel` in PyTorch: transformers' `EncoderDecoderModel` (encoder + causal
decoder with cross-attention, `enc_to_dec_proj` when hidden sizes differ, labels shifted into
decoder inputs, mean cross-entropy ignoring -100), its load/save class methods through
`encdec.core.modeling`, and the static-cache decoding contract (`init_cache`, `decode_step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encdec.core import registry, seq2seq, validation, weights
from encdec.core.config import EncoderDecoderConfig, GenerationConfig, ModelConfig
from encdec.core.modeling import Backend, load_pretrained, save_pretrained
from encdec.core.outputs import BaseModelOutput, Seq2SeqLMOutput
from encdec.core.registry import check_length, family_class
from encdec.core.seq2seq import (
    IGNORE_INDEX,
    resolve_outputs,
    route_forward_kwargs,
    shift_token_ids,
)
from encdec.core.tokenizer_files import Tokenizers
from encdec.core.warm_start import warm_start
from encdec.core.weights import Dialect
from encdec.export import export_model

from . import generation, params
from .bart import BartDecoder, BartForCausalLM
from .bert import BertLMHeadModel, BertModel
from .distilbert import DistilBertModel
from .gpt2 import GPT2LMHeadModel, GPT2Model
from .params import host_array

logger = logging.getLogger("encdec")

# family (`encdec.core.registry.Architecture.family`) -> (base model, causal LM or None)
FAMILIES: dict[str, tuple[type[nn.Module], type[nn.Module] | None]] = {
    "bart": (BartDecoder, BartForCausalLM),
    "bert": (BertModel, BertLMHeadModel),
    "distilbert": (DistilBertModel, None),
    "gpt2": (GPT2Model, GPT2LMHeadModel),
}


def encoder_class(config: ModelConfig) -> type[nn.Module]:
    """The class that serves `config` as the encoder."""
    return family_class(FAMILIES, config, decoder=False)


def decoder_class(config: ModelConfig) -> type[nn.Module]:
    """The class that serves `config` as the decoder (the registry's clear error for an
    encoder-only architecture)."""
    return family_class(FAMILIES, config, decoder=True)


def check_decoder(decoder: nn.Module) -> None:
    """Refuse a decoder object without cross-attention layers (core's `check_decoder`)."""
    seq2seq.check_decoder(type(decoder).__name__, decoder.config,
                          [n for n, _ in decoder.named_parameters()], Dialect.PT)


def extra_forward_args(module: nn.Module) -> frozenset[str]:
    """The forward arguments of a backbone a caller may pass through the composite."""
    return seq2seq.extra_forward_args(module.forward)


Cache = tuple[tuple[Tensor, Tensor, Tensor, Tensor], ...]  # per layer (k_buf, v_buf, ck, cv)


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Dropout off for the duration (decoding never trains), the mode restored afterwards."""
    training = model.training
    if training:
        model.eval()
    try:
        yield
    finally:
        if training:
            model.train()


class EncoderDecoderModel(nn.Module):
    """An encoder and a cross-attending decoder, numerically identical to the reference."""

    def __init__(self, config: EncoderDecoderConfig | None = None, *,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        if config is None:
            if encoder is None or decoder is None:
                raise ValueError("Either a configuration or an encoder and a decoder has to be "
                                 "provided.")
            check_decoder(decoder)
            config = EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config,
                                                                       decoder.config)
        elif not isinstance(config, EncoderDecoderConfig):
            raise ValueError("config: expected an EncoderDecoderConfig, got "
                             f"{type(config).__name__}")
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)
        self.tokenizers = Tokenizers()  # set by the loaders: the checkpoint's
        with params.constructing() as c:
            if encoder is None:
                encoder = encoder_class(config.encoder)(config.encoder)
            if decoder is None:
                decoder = decoder_class(config.decoder)(config.decoder)
            self.encoder, self.decoder = encoder, decoder
            self.enc_to_dec_proj = nn.Linear(config.encoder.hidden_size,
                                             config.decoder.hidden_size) \
                if weights.has_enc_to_dec_proj(config) else None
        # the backbones share the composite's configs, so `model.config.decoder.x = …` reaches them
        self.encoder.config, self.decoder.config = config.encoder, config.decoder
        if c.outermost:
            self._materialize()

    def _materialize(self) -> None:
        """Allocate what was built on the meta device, init it (unless loading), tie."""
        for sub in (self.encoder, self.decoder):
            if any(p.is_meta for p in sub.parameters()):
                params.materialize(sub, [(sub, sub.table(), sub.config)])
        if self.enc_to_dec_proj is not None:
            self.enc_to_dec_proj.to_empty(device="cpu")
            if not params.skipping_init():
                self._init_proj()
        self.tie_weights()

    def _init_proj(self) -> None:
        with torch.no_grad():
            self.enc_to_dec_proj.weight.normal_(0.0, self.config.decoder.initializer_range)
            self.enc_to_dec_proj.bias.zero_()

    def table(self) -> weights.Table:
        return registry.encoder_decoder_table(self.config)

    def tie_weights(self) -> None:
        """Tie word embeddings inside the decoder and, with `tie_encoder_decoder`, the decoder's
        base weights to the encoder's (the encoder's values win, as in the reference)."""
        params.tie_params(self, self.table())

    def get_encoder(self) -> nn.Module:
        return self.encoder

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer in the backward pass (torch.utils.checkpoint, training only)."""
        for base in (self.encoder, self.decoder.base_model):
            base.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for base in (self.encoder, self.decoder.base_model):
            base.gradient_checkpointing = False

    # --- forward --------------------------------------------------------------------------

    def _project(self, encoder_hidden_states: Tensor) -> Tensor:
        if self.enc_to_dec_proj is not None:
            return self.enc_to_dec_proj(encoder_hidden_states)  # (B, S, H_dec)
        return encoder_hidden_states

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None,
                encoder_outputs: tuple | BaseModelOutput | None = None,
                past_key_values: tuple | None = None, inputs_embeds: Tensor | None = None,
                decoder_inputs_embeds: Tensor | None = None, labels: Tensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> Seq2SeqLMOutput | tuple:
        """As the reference's forward; `past_key_values` in its legacy per-layer tuple format
        `(self_k, self_v, cross_k, cross_v)`. Other keyword arguments go to the encoder, and
        `decoder_`-prefixed ones to the decoder (e.g. `token_type_ids`,
        `decoder_position_ids`); output switches left None come from the configs."""
        enc_kwargs, dec_kwargs = route_forward_kwargs(
            kwargs, extra_forward_args(self.encoder), extra_forward_args(self.decoder))
        o = resolve_outputs(self.config, output_attentions, output_hidden_states, use_cache,
                            return_dict)
        validation.check_forward(self.config, input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=decoder_input_ids,
                                  decoder_attention_mask=decoder_attention_mask,
                                  encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                  inputs_embeds=inputs_embeds,
                                  decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
                                  host=host_array)  # before anything runs on them
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds,
                                           output_attentions=o.encoder_attentions,
                                           output_hidden_states=o.encoder_hidden_states,
                                           **enc_kwargs)
        elif isinstance(encoder_outputs, tuple):  # as the reference's BaseModelOutput(*tuple)
            names = ("last_hidden_state", "hidden_states", "attentions")
            encoder_outputs = BaseModelOutput(**dict(zip(names, encoder_outputs, strict=False)))
        states = self._project(encoder_outputs["last_hidden_state"])

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if decoder_attention_mask is None:
                decoder_attention_mask = (decoder_input_ids != self.config.pad_token_id).to(
                    decoder_input_ids.dtype)

        dec = self.decoder(input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
                           inputs_embeds=decoder_inputs_embeds, encoder_hidden_states=states,
                           encoder_attention_mask=attention_mask, past_key_values=past_key_values,
                           use_cache=o.use_cache, output_attentions=o.decoder_attentions,
                           output_hidden_states=o.decoder_hidden_states, **dec_kwargs)
        loss = None
        if labels is not None:
            logits = dec.logits  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100)
        out = Seq2SeqLMOutput(
            loss=loss, logits=dec.logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs["last_hidden_state"],
            encoder_hidden_states=encoder_outputs.get("hidden_states"),
            encoder_attentions=encoder_outputs.get("attentions"))
        return out if o.return_dict else out.to_tuple()

    def prepare_decoder_input_ids_from_labels(self, labels: Tensor) -> Tensor:
        """labels -> decoder_input_ids (core rule: shift right, start id, -100 -> pad)."""
        pad, start = shift_token_ids(self.config.pad_token_id, self.config.decoder_start_token_id)
        ids = torch.cat([labels.new_full((labels.shape[0], 1), start), labels[:, :-1]], dim=1)
        return ids.masked_fill(ids == IGNORE_INDEX, pad)  # (B, T)

    # --- static-cache decoding contract -----------------------------------------------------

    @torch.no_grad()
    def init_cache(self, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor | None,
                   batch_size: int, max_length: int) -> Cache:
        """Per decoder layer (self_k_buf, self_v_buf, cross_k, cross_v): zero self buffers
        (batch_size, h, max_length, d); cross K/V (Be, h, S, d) computed once from the
        (projected) encoder states. `batch_size` may be Be * num_beams."""
        c = self.config.decoder
        check_length(c, "the decoding cache (max_length)", max_length)
        h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        with _inference(self):
            states = self._project(encoder_hidden_states)
            kv = self.decoder.cross_kv(states)
        dtype, device = states.dtype, states.device
        cache = []
        for ck, cv in kv:
            buf = functools.partial(torch.zeros, batch_size, h, max_length, d, dtype=dtype,
                                    device=device)
            cache.append((buf(), buf(), ck, cv))
        return tuple(cache)

    @torch.no_grad()
    def decode_step(self, decoder_input_ids: Tensor, cache: Cache, cache_index: int | Tensor,
                    encoder_attention_mask: Tensor | None,
                    decoder_attention_mask: Tensor | None = None) -> tuple[Tensor, Cache]:
        """decoder_input_ids (B, T) at positions cache_index + arange(T) -> (logits (B, T, V),
        cache). Self buffers are written in place; cross K/V are never repeated across beams.
        `decoder_attention_mask` (B, max_length), optional, masks padded cache positions."""
        with _inference(self):
            return self.decoder.step(decoder_input_ids, cache, cache_index,
                                     encoder_attention_mask, decoder_attention_mask)

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 **kwargs: Any) -> Any:
        """Token ids starting with the decoder start id (see `encdec.pt.generation.generate`)."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    def export(self, directory: str | os.PathLike, format: str | None = None,
               **kwargs: Any) -> os.PathLike:
        """Export for deployment (default format "onnx"), verified token for token against
        `generate` in a fresh process and written atomically (see `encdec.export.export_model`;
        `kwargs`: generation settings fixed in the artefact, `verify_output=False`)."""
        return export_model(self, directory, format, **kwargs)

    # --- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_encoder_decoder_pretrained(
            cls, encoder_pretrained_model_name_or_path: str | os.PathLike | None = None,
            decoder_pretrained_model_name_or_path: str | os.PathLike | None = None, *,
            encoder_model: nn.Module | None = None, decoder_model: nn.Module | None = None,
            output_loading_info: bool = False, **kwargs: Any):
        """Warm-start from two single-model checkpoints (`encoder_*` / `decoder_*` kwargs go to
        that side's config, the others to the composite's), or use a model object given as
        `encoder_model` / `decoder_model` for that side (as the reference). Weights a checkpoint
        lacks are initialised and reported (a given side's report is empty); the model is
        returned in eval mode (with `{"encoder": report, "decoder": report}`). `dtype=` loads
        both sides in that dtype (default: the sides' own, `encoder_dtype=` / `decoder_dtype=`
        or their checkpoints', which must agree). Any other keyword is a TypeError naming it,
        before any file is read (`encdec.core.warm_start`)."""
        model, reports = warm_start(_backend(cls), encoder_pretrained_model_name_or_path,
                                    decoder_pretrained_model_name_or_path,
                                    encoder_model=encoder_model, decoder_model=decoder_model,
                                    **kwargs)
        return (model, reports) if output_loading_info else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        output_loading_info: bool = False, **kwargs: Any):
        """Load a composite checkpoint (strict: every weight must be there), in eval mode, in
        `dtype=` (or `torch_dtype=`; default "auto": the checkpoint's dtype, as the reference);
        other keywords are EncoderDecoderConfig fields (or `config=`), anything else a
        TypeError naming it (`encdec.core.modeling.load_pretrained`). With
        `output_loading_info`, also the load report."""
        model, report = load_pretrained(_backend(cls), pretrained_model_name_or_path, **kwargs)
        return (model, report) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike,
                        max_shard_size: int | str = "5GB") -> os.PathLike:
        """Write config.json, generation_config.json, safetensors weights and the tokenizer
        files the model was loaded with (`encdec.core.tokenizer_files`) atomically."""
        return save_pretrained(save_directory, self.config, self.generation_config, Dialect.PT,
                               functools.partial(params.get, self), max_shard_size=max_shard_size,
                               dtype=params.dtype_of(self),
                               tokenizers=self.tokenizers)


def _build(cls: type[EncoderDecoderModel], config: EncoderDecoderConfig, dtype: str,
           encoder: nn.Module | None, decoder: nn.Module | None) -> EncoderDecoderModel:
    """The composite for a load: weights allocated in `dtype`, not initialised."""
    with params.skip_init(), params.default_dtype(dtype):
        return cls(config=config, encoder=encoder, decoder=decoder)


def _backend(cls: type[EncoderDecoderModel]) -> Backend:
    """The hooks of `encdec.core.modeling.load_pretrained` and `encdec.core.warm_start`."""
    return dataclasses.replace(
        params.BACKEND, build=functools.partial(_build, cls),
        cast=lambda model, dtype: model.to(params.torch_dtype(dtype)), check_decoder=check_decoder)
