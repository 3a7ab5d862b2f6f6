"""Runtime of encdec's ONNX exports: numpy + onnxruntime only (no torch, tensorflow or jax).

`load(directory)` checks the artefact (`export.json`, every file's sha256, the graphs'
inputs against the recorded model) and returns an `OnnxModel` whose `generate` drives the
encoder graph once and the decoder-step graph once per token with `encdec.core.generation`'s
plan, processors and beam search — the loop of `encdec.pt.generation`, token for token: greedy,
beam search and (with numpy's generator, so not torch's draws) sampling. The self-attention
buffers are (rows, heads, max_length, head_dim), written by the graph at `cache_index`;
beams reorder their rows; the cross-attention K/V stay at the encoder batch size.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

from encdec.core import generation as G
from encdec.core.config import EncoderDecoderConfig, GenerationConfig
from encdec.core.validation import check_positions
from encdec.export import ExportError, read_manifest


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no framework noise
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ExportError(f"{path}: onnxruntime cannot load it ({e})") from None


class OnnxModel:
    """An ONNX export loaded for generation (see `load`)."""

    def __init__(self, directory: str | os.PathLike, *, threads: int | None = None):
        self.directory = Path(directory)
        m = read_manifest(self.directory, "onnx")
        self.manifest = m
        self.config = EncoderDecoderConfig.from_dict(m["config"])
        self.generation_config = GenerationConfig.from_dict(m["generation"])
        g = m["graphs"]
        self.layers, self.heads, self.head_dim = g["layers"], g["heads"], g["head_dim"]
        self.io = g
        self.encoder = _session(self.directory / "encoder.onnx", threads)
        self.decoder = _session(self.directory / "decoder_step.onnx", threads)
        for file, sess, side in (("encoder.onnx", self.encoder, "encoder"),
                                 ("decoder_step.onnx", self.decoder, "decoder")):
            got = [i.name for i in sess.get_inputs()]
            if got != g[f"{side}_inputs"]:
                raise ExportError(f"{self.directory / file}: graph inputs {got} do not match "
                                  f"the {g[side + '_inputs']} recorded in export.json")
            got_id = sess.get_modelmeta().custom_metadata_map.get("encdec_export_id")
            if got_id != g["export_id"]:
                raise ExportError(f"{self.directory / file}: a graph from another export (its "
                                  f"export id {got_id} is not {g['export_id']} of export.json)")
        vocab = self.decoder.get_outputs()[0].shape[-1]
        if isinstance(vocab, int) and vocab != self.config.decoder.vocab_size:
            raise ExportError(f"{self.directory / 'decoder_step.onnx'}: logits of width {vocab}, "
                              f"but the exported model's decoder vocabulary is "
                              f"{self.config.decoder.vocab_size}: a graph from another model")

    # --- graphs --------------------------------------------------------------------------

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """(states, cross_k_0, cross_v_0, ...) for (Be, S) int64 inputs."""
        return self.encoder.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})

    def step(self, tokens: np.ndarray, cache_index: int, mask: np.ndarray,
             selfs: list[np.ndarray], cross: list[np.ndarray]) -> tuple[np.ndarray, list]:
        """tokens (N,) at position cache_index -> (fp32 logits (N, V), new self buffers)."""
        feed = {"input_ids": tokens[:, None].astype(np.int64),
                "cache_index": np.asarray(cache_index, np.int64),
                "encoder_attention_mask": mask}
        names = self.io["decoder_inputs"][3:]
        feed.update(zip(names, [*selfs, *cross], strict=True))
        out = self.decoder.run(None, feed)
        return out[0], out[1:]

    # --- generate ------------------------------------------------------------------------

    def generate(self, input_ids: Any, attention_mask: Any = None, *,
                 seed: int | None = None, **kwargs: Any) -> Any:
        """Token ids (batch * num_return_sequences, length) as encdec's `generate`, with the
        settings fixed at export (`kwargs` override them: generation-config field names)."""
        p = G.plan(self.config, self.generation_config, **kwargs)
        check_positions(self.config.decoder, p)
        ids = np.asarray(input_ids, np.int64)
        if ids.ndim != 2:
            raise ValueError(f"input_ids: expected a (batch, length) array, got shape "
                             f"{ids.shape}")
        mask = (np.ones_like(ids) if attention_mask is None
                else np.asarray(attention_mask, np.int64))
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask: shape {mask.shape} differs from input_ids' "
                             f"{ids.shape}")
        cross = self.encode(ids, mask)[1:]
        rows = ids.shape[0] * p.expand_size
        selfs = [np.zeros((rows, self.heads, p.max_length, self.head_dim), np.float32)
                 for _ in range(2 * self.layers)]
        rng = np.random.default_rng(seed)
        if p.is_beam:
            return self._beam(p, ids.shape[0], mask, selfs, cross, rng)
        return self._greedy_or_sample(p, rows, mask, selfs, cross, rng)

    def _greedy_or_sample(self, p: G.GenerationPlan, rows: int, mask, selfs, cross, rng) -> Any:
        seqs = np.full((rows, p.max_length), p.decoder_start_token_id, np.int64)
        unfinished = np.ones(rows, bool)
        all_scores = []
        cur_len = G.PROMPT_LENGTH
        while True:
            logits, selfs = self.step(seqs[:, cur_len - 1], cur_len - 1, mask, selfs, cross)
            scores = G.apply_processors(p.processors, seqs[:, :cur_len], logits)
            all_scores.append(scores)
            if p.do_sample:
                probs = G.softmax(scores).astype(np.float64)
                nxt = np.array([rng.choice(len(r), p=r / r.sum()) for r in probs], np.int64)
            else:
                nxt = scores.argmax(-1)
            if p.eos_token_ids:
                nxt = np.where(unfinished, nxt, p.pad_token_id)
                unfinished &= ~np.isin(nxt, p.eos_token_ids)
            seqs[:, cur_len] = nxt
            cur_len += 1
            if cur_len >= p.max_length or (p.eos_token_ids and not unfinished.any()):
                break
        return G.make_output(p, seqs[:, :cur_len], scores=all_scores)

    def _beam(self, p: G.GenerationPlan, batch: int, mask, selfs, cross, rng) -> Any:
        state = G.beam_init(p, batch)
        rows = batch * p.num_beams
        all_scores = []
        cur_len = G.PROMPT_LENGTH
        while True:
            ids = state.running_sequences[:, :, :cur_len].reshape(rows, cur_len)
            logits, selfs = self.step(ids[:, -1], cur_len - 1, mask, selfs, cross)
            log_probs = G.apply_processors(p.processors, ids, G.log_softmax(logits))
            all_scores.append(log_probs)
            state, reorder, done = G.beam_step(p, state, log_probs, cur_len, rng)
            cur_len += 1
            if done:
                break
            selfs = [buf[reorder] for buf in selfs]
        seqs, seq_scores, idx = G.beam_finalize(p, state)
        return G.make_output(p, seqs, scores=all_scores, sequences_scores=seq_scores,
                             beam_indices=idx)


def load(directory: str | os.PathLike, *, threads: int | None = None) -> OnnxModel:
    """Load an ONNX export written by `encdec export --format onnx` (checked; see module)."""
    return OnnxModel(directory, threads=threads)


def main(argv: list[str] | None = None) -> int:
    """`run.py --in inputs.npz --out tokens.npz`: the export next to run.py generates for the
    npz's input_ids / attention_mask with its fixed settings; tokens go to the out npz."""
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--in", dest="inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dir", default=None, help="the export (default: run.py's folder)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    directory = Path(args.dir) if args.dir else Path(sys.argv[0]).resolve().parent
    try:
        model = load(directory)
        with np.load(args.inputs) as f:
            ids, mask = f["input_ids"], f["attention_mask"] if "attention_mask" in f else None
        tokens = model.generate(ids, mask, seed=args.seed)
    except (ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    np.savez(args.out, tokens=np.asarray(tokens))
    return 0


__all__ = ["OnnxModel", "load", "main"]
