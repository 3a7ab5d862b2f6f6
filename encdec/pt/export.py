"""ONNX export of a PyTorch `EncoderDecoderModel`: two graphs that `encdec.onnx` drives.

- `encoder.onnx`: (input_ids, attention_mask) -> the encoder states projected for the decoder
  (`enc_to_dec_proj` applied when it exists) and the cross-attention K/V of every decoder layer,
  computed once per call (as `EncoderDecoderModel.init_cache`).
- `decoder_step.onnx`: (input_ids (N, 1), cache_index (), encoder_attention_mask (Be, S),
  the self-attention buffers of every layer (N, h, L, d), the cross K/V (Be, h, S, d)) ->
  (logits (N, V), the updated buffers): `EncoderDecoderModel.decode_step` on the static cache,
  the new token's K/V written at `cache_index` (returned, never mutated in place). N may be
  Be * num_beams: beams of one example share the cross K/V, as in encdec pt.

Every axis is dynamic (batch, source length, cache length L = max_length, beams); the runtime
allocates the buffers at the plan's max_length. Graphs are checked with `onnx.checker`.
The generation settings fixed at export time go to `export.json` (see `encdec.export`).
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from encdec.core import generation as G
from encdec.core.validation import check_positions
from encdec.export import run_script, write_manifest

OPSET = 17
EXPORT_ID = "encdec_export_id"  # graph metadata: both graphs and export.json carry the same id
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder_step.onnx"


def _layers(model) -> int:
    return len(model.decoder.cross_kv(torch.zeros(1, 1, model.config.decoder.hidden_size)))


class _Encoder(nn.Module):
    """input_ids, attention_mask -> (states, cross_k_0, cross_v_0, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        states = self.model.encoder(input_ids=input_ids,
                                    attention_mask=attention_mask)["last_hidden_state"]
        states = self.model._project(states)  # (Be, S, H_dec)
        flat = [t for kv in self.model.decoder.cross_kv(states) for t in kv]
        return (states, *flat)


class _DecoderStep(nn.Module):
    """One static-cache decoder step whose buffers are inputs and outputs (no mutation)."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids: Tensor, cache_index: Tensor, encoder_attention_mask: Tensor,
                *caches: Tensor) -> tuple[Tensor, ...]:
        n = self.layers
        selfs, cross = caches[:2 * n], caches[2 * n:]
        cache = tuple((selfs[2 * i].clone(), selfs[2 * i + 1].clone(), cross[2 * i],
                       cross[2 * i + 1]) for i in range(n))
        logits, cache = self.model.decoder.step(input_ids, cache, cache_index,
                                                encoder_attention_mask, None)
        return (logits[:, -1].float(), *[t for c in cache for t in c[:2]])


def _io_names(layers: int) -> dict[str, list[str]]:
    """The graphs' input and output names (the runtime's contract)."""
    selfs = [f"self_{kv}_{i}" for i in range(layers) for kv in "kv"]
    cross = [f"cross_{kv}_{i}" for i in range(layers) for kv in "kv"]
    return {"encoder_inputs": ["input_ids", "attention_mask"],
            "encoder_outputs": ["encoder_states", *cross],
            "decoder_inputs": ["input_ids", "cache_index", "encoder_attention_mask", *selfs,
                               *cross],
            "decoder_outputs": ["logits", *[f"new_{s}" for s in selfs]]}


def _write_graphs(model, directory: str | os.PathLike, *, opset: int = OPSET) -> dict[str, Any]:
    """Write `encoder.onnx` and `decoder_step.onnx` into `directory`, check them with
    `onnx.checker`; returns the graphs' names (see `_io_names`) with the layer count."""
    directory = Path(directory)
    training = model.training
    try:
        return _trace_graphs(model.eval(), directory, opset)
    finally:
        model.train(training)  # the exporter restores the wrappers' (eval) mode, ours too


def _trace_graphs(model, directory: Path, opset: int) -> dict[str, Any]:
    import onnx

    export_id = uuid.uuid4().hex
    c = model.config.decoder
    n = _layers(model)
    h, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    io = _io_names(n)
    be, s, beams, length = 2, 5, 2, 4
    ids = torch.full((be, s), 4, dtype=torch.long)
    mask = torch.ones(be, s, dtype=torch.long)
    batch, src, rows, cache = "batch", "source_length", "rows", "cache_length"
    with torch.no_grad():
        enc_out = _Encoder(model)(ids, mask)
    cross = list(enc_out[1:])
    selfs = [torch.zeros(be * beams, h, length, d) for _ in range(2 * n)]
    step_inputs = (torch.full((be * beams, 1), 4, dtype=torch.long),
                   torch.tensor(1, dtype=torch.long), mask, *selfs, *cross)
    enc_axes = {"input_ids": {0: batch, 1: src}, "attention_mask": {0: batch, 1: src},
                "encoder_states": {0: batch, 1: src},
                **{k: {0: batch, 2: src} for k in io["encoder_outputs"][1:]}}
    dec_axes = {"input_ids": {0: rows}, "encoder_attention_mask": {0: batch, 1: src},
                "logits": {0: rows},
                **{k: {0: rows, 2: cache} for k in io["decoder_inputs"][3:3 + 2 * n]},
                **{k: {0: batch, 2: src} for k in io["decoder_inputs"][3 + 2 * n:]},
                **{k: {0: rows, 2: cache} for k in io["decoder_outputs"][1:]}}
    jobs = ((ENCODER_FILE, _Encoder(model).eval(), (ids, mask), "encoder", enc_axes),
            (DECODER_FILE, _DecoderStep(model, n).eval(), step_inputs, "decoder", dec_axes))
    for file, module, args, side, axes in jobs:
        path = directory / file
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-int shapes
            torch.onnx.export(module, args, str(path), input_names=io[f"{side}_inputs"],
                              output_names=io[f"{side}_outputs"], dynamic_axes=axes,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        graph = onnx.load(str(path))
        onnx.helper.set_model_props(graph, {EXPORT_ID: export_id})  # ties the pair together
        onnx.save(graph, str(path))
        onnx.checker.check_model(str(path), full_check=True)
    return {"export_id": export_id, "layers": n, "heads": h, "head_dim": d, "opset": opset,
            **io}


RUNNER = '''"""Run an encdec ONNX export: python run.py --in inputs.npz --out tokens.npz
(needs numpy, onnxruntime and encdec's framework-free runtime `encdec.onnx`)."""
import sys

from encdec.onnx import main

sys.exit(main())
'''


def export(model, directory: str | os.PathLike, *, example_inputs=None,
           **generation_kwargs: Any) -> Path:
    """Write the ONNX artefact of `model` into `directory`: the two graphs, `run.py` and
    `export.json` (the generation settings `generation_kwargs` fixed, file hashes).
    `example_inputs` is unused (every axis is dynamic)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = settings_of(model, generation_kwargs)
    io = _write_graphs(model, directory)
    (directory / "run.py").write_text(RUNNER)
    write_manifest(directory, "onnx", model.config, settings,
                   inputs={"input_ids": "int64", "attention_mask": "int64"},
                   files=[ENCODER_FILE, DECODER_FILE, "run.py"], extra={"graphs": io})
    return directory


def settings_of(model, generation_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model's generation config with the export-time overrides, checked by core's plan
    (a bad value fails here, at export time, naming the argument)."""
    gc = model.generation_config.merged(**generation_kwargs)
    p = G.plan(model.config, gc)
    check_positions(model.config.decoder, p)
    return gc.to_dict()


def run_exported(directory: str | os.PathLike, input_ids: np.ndarray,
                 attention_mask: np.ndarray) -> np.ndarray:
    """Tokens of the export in `directory`, run by its `run.py` in a fresh Python process."""
    return run_script(Path(directory), input_ids, attention_mask)
