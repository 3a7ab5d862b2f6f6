"""Benchmark: encdec's `generate` against transformers' PyTorch `generate` on the same weights.

For bert-base-sized bert2bert and bert2gpt2 (random weights made with transformers), 128 input
tokens, 32 new tokens (`min_new_tokens` = `max_new_tokens`, so every side does the same number
of steps), batch 1 and 8, greedy and 4 beams, it prints per backend:

- ms/token: decoding time per generated position, (T(32 new) - T(1 new)) / 31, so the encoder
  and the set-up are left out (both are run once per call by every backend);
- tok/s: generated tokens per second of decoding, batch * 1000 / ms/token;
- call s: the whole call for 32 new tokens;
- vs ref: the reference's ms/token divided by ours (> 1: we are faster);
- x floor: ms/token over the memory-bandwidth floor, the decoder weight bytes read per token
  (the cross-attention K/V projections run once per call, not per token) divided by the
  matrix-vector bandwidth measured in this run (meaningful at batch 1 greedy);
- same: whether the token ids equal the reference's.

`onnx` is encdec's ONNX export of the pt model (`encdec.pt.export`) run by `encdec.onnx`
(onnxruntime + numpy), timed at batch 1 greedy only (its deployment row).

Usage: python benchmarks/generate.py [--tiny] [--backends ref,pt,tf,flax,onnx] [--models ...]
`--tiny` (a few-kB model, 16 input and 8 new tokens) is the CI smoke test.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

BACKENDS = ("ref", "pt", "tf", "flax", "onnx")
ONLY = {"onnx": {(1, 1)}}  # backend -> the (batch, beams) settings it is timed at
MODELS = ("bert2bert", "bert2gpt2")


@dataclass(frozen=True)
class Size:
    src_len: int
    new_tokens: int
    batches: tuple[int, ...]
    beams: tuple[int, ...]
    repeats: int


FULL = Size(src_len=128, new_tokens=32, batches=(1, 8), beams=(1, 4), repeats=3)
TINY = Size(src_len=16, new_tokens=8, batches=(1, 2), beams=(1, 2), repeats=1)


def build_reference(name: str, tiny: bool):
    """transformers' EncoderDecoderModel, bert-base sized (or tiny), random weights, eval mode."""
    import torch
    import transformers as tr

    small = dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
    enc = tr.BertConfig(**small) if tiny else tr.BertConfig()
    if name == "bert2bert":
        dec = tr.BertConfig(**small) if tiny else tr.BertConfig()
        start, pad, eos = 101 % enc.vocab_size, 0, 102 % enc.vocab_size  # [CLS], [PAD], [SEP]
    else:
        dec = (tr.GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=4, n_positions=64)
               if tiny else tr.GPT2Config())
        start = pad = eos = dec.vocab_size - 1  # <|endoftext|>
    dec.is_decoder, dec.add_cross_attention = True, True
    dec.bos_token_id, dec.eos_token_id, dec.pad_token_id = start, eos, pad
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id = start, pad
    torch.manual_seed(0)
    return tr.EncoderDecoderModel(config=config).eval()


def decoder_bytes_per_token(model) -> int:
    """Bytes of decoder weights read for one token: every decoder matrix and vector except the
    embedding tables (one row each) and the cross-attention K/V projections (run once per
    call), plus the LM head (tied to the word embeddings, read in full)."""
    once = ("crossattention.self.key", "crossattention.self.value", "crossattention.c_attn")
    rows = ("word_embeddings", "position_embeddings", "token_type_embeddings", ".wte.", ".wpe.")
    total = 0
    for name, p in model.decoder.named_parameters():
        if any(s in name for s in once) or any(s in name for s in rows):
            continue
        total += p.numel() * p.element_size()
    head = model.decoder.get_output_embeddings().weight
    return total + head.numel() * head.element_size()


def matvec_bandwidth(nbytes: int = 256 << 20, repeats: int = 7) -> dict[str, float]:
    """Best matrix-vector bandwidth (bytes/s) of torch (`torch.mv`) and numpy (its BLAS) on an
    fp32 matrix of nbytes (well beyond the last-level cache)."""
    import torch

    w = torch.randn(nbytes // 4 // 4096, 4096)
    x = torch.randn(4096)
    w_np, x_np = w.numpy(), x.numpy()
    out = {}
    for name, fn in (("torch", lambda: torch.mv(w, x)), ("numpy", lambda: w_np @ x_np)):
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = w.numel() * 4 / best
    return out


def load_backend(backend: str, directory: Path, reference) -> Callable[..., np.ndarray]:
    """A function (input_ids, attention_mask, **generate kwargs) -> token ids (numpy)."""
    if backend == "ref":
        import torch

        def run(ids, mask, **kw):
            with torch.inference_mode():
                return reference.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(
                    mask), **kw).numpy()
        return run
    if backend == "pt":
        import torch

        from encdec.pt import EncoderDecoderModel
        from encdec.pt.generation import generate
        model = EncoderDecoderModel.from_pretrained(directory)
        return lambda ids, mask, **kw: generate(model, torch.as_tensor(ids), torch.as_tensor(mask),
                                                **kw).numpy()
    if backend == "onnx":
        import encdec.onnx
        from encdec.pt import EncoderDecoderModel
        from encdec.pt.export import export

        export(EncoderDecoderModel.from_pretrained(directory), directory / "onnx")
        exported = encdec.onnx.load(directory / "onnx")
        return lambda ids, mask, **kw: exported.generate(ids, mask, **kw)
    if backend == "tf":
        from encdec.tf import EncoderDecoderModel
        from encdec.tf.generation import generate
    else:
        from encdec.flax import EncoderDecoderModel
        from encdec.flax.generation import generate
    model = EncoderDecoderModel.from_pretrained(directory)
    return lambda ids, mask, **kw: np.asarray(generate(model, ids, mask, **kw))


def timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """{backend: (best seconds, last result)}: one warm-up run each, then `repeats` rounds that
    alternate the backends, so that a change in machine load hits them alike."""
    out = {name: fn() for name, fn in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: (best[name], out[name]) for name in runs}


def bench_model(name: str, size: Size, backends: list[str], bandwidths: dict[str, float],
                tiny: bool) -> list[dict]:
    bandwidth = max(bandwidths.values())
    reference = build_reference(name, tiny)
    nbytes = decoder_bytes_per_token(reference)
    floor_ms = nbytes / bandwidth * 1e3
    n_params = sum(p.numel() for p in reference.parameters()) / 1e6
    print(f"\n## {name}: {n_params:.3g}M parameters; floor {floor_ms:.3g} ms/token "
          f"({nbytes / 1e6:.3g} MB of decoder weights per token)")
    for lib, bw in bandwidths.items():
        print(f"floor at {lib}'s bandwidth: {nbytes / bw * 1e3:.3g} ms/token")
    vocab = reference.config.encoder.vocab_size
    inputs = {b: np.random.default_rng(b).integers(vocab // 10, vocab, (b, size.src_len))
              for b in size.batches}  # the same inputs for every backend
    results = []
    with tempfile.TemporaryDirectory() as d:
        reference.save_pretrained(d)
        runners = {backend: load_backend(backend, Path(d), reference) for backend in backends}
        for batch in size.batches:
            ids, mask = inputs[batch], np.ones_like(inputs[batch])
            for beams in size.beams:
                active = {b: run for b, run in runners.items()
                          if (batch, beams) in ONLY.get(b, {(batch, beams)})}
                full, one = (timed({b: functools.partial(run, ids, mask, num_beams=beams,
                                                         max_new_tokens=n, min_new_tokens=n)
                                    for b, run in active.items()}, size.repeats)
                             for n in (size.new_tokens, 1))
                for backend in active:
                    (t_full, seqs), (t_one, _) = full[backend], one[backend]
                    ms = max(t_full - t_one, 1e-6) / (size.new_tokens - 1) * 1e3
                    results.append(dict(model=name, backend=backend, batch=batch, beams=beams,
                                        ms=ms, call=t_full, seqs=seqs, floor=floor_ms))
        del runners
        gc.collect()
    ref = {(r["batch"], r["beams"]): r for r in results if r["backend"] == "ref"}
    print("| backend | batch | beams | ms/token | tok/s | call s | vs ref | x floor | same |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = ref.get((r["batch"], r["beams"]))
        vs = f"{base['ms'] / r['ms']:.2f}" if base else "-"
        same = ("yes" if base is not None and base["seqs"].shape == r["seqs"].shape
                and (base["seqs"] == r["seqs"]).all() else "no") if base else "-"
        print(f"| {r['backend']} | {r['batch']} | {r['beams']} | {r['ms']:.1f} | "
              f"{r['batch'] * 1e3 / r['ms']:.0f} | {r['call']:.2f} | {vs} | "
              f"{r['ms'] / r['floor']:.2f} | {same} |")
    for backend in backends:
        mine = {(r["batch"], r["beams"]): r["ms"] for r in results if r["backend"] == backend}
        for batch in size.batches:
            if (batch, 1) in mine and (batch, max(size.beams)) in mine:
                print(f"{backend}: batch {batch}: beam-{max(size.beams)} / greedy per token = "
                      f"{mine[batch, max(size.beams)] / mine[batch, 1]:.2f}")
    return results


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models: the CI smoke test")
    ap.add_argument("--backends", default="ref,pt,tf,flax,onnx",
                    help=f"comma-separated subset of {','.join(BACKENDS)}")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    ap.add_argument("--batches", help="comma-separated batch sizes (default: 1,8; tiny: 1,2)")
    ap.add_argument("--beams", help="comma-separated beam counts (default: 1,4; tiny: 1,2)")
    ap.add_argument("--repeats", type=int, help="timed runs per setting (the best is kept)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    models = [m for m in args.models.split(",") if m]
    if unknown := sorted(set(backends) - set(BACKENDS)) + sorted(set(models) - set(MODELS)):
        ap.error(f"unknown backends/models: {unknown}")
    if "ref" not in backends:
        backends.insert(0, "ref")  # ratios need the reference
    size = TINY if args.tiny else FULL
    size = Size(size.src_len, size.new_tokens,
                tuple(map(int, args.batches.split(","))) if args.batches else size.batches,
                tuple(map(int, args.beams.split(","))) if args.beams else size.beams,
                args.repeats or size.repeats)
    warnings.filterwarnings("ignore")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()

    bandwidths = matvec_bandwidth(16 << 20 if args.tiny else 256 << 20)
    print(f"# encdec generate benchmark: {cpu_name()}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), python {platform.python_version()}")
    print("matrix-vector bandwidth: "
          + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bandwidths.items())
          + f" (the floor uses the best); input {size.src_len} tokens, "
          f"{size.new_tokens} new tokens")
    for name in models:
        bench_model(name, size, backends, bandwidths, args.tiny)
    return 0


if __name__ == "__main__":
    sys.exit(main())
