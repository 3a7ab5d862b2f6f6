"""Benchmark: one training step of encdec against transformers' PyTorch EncoderDecoderModel.

One step = forward + backward + AdamW update, on a bert-base-sized bert2bert (random weights made
with transformers by `benchmarks/generate.py`'s builder, dropout set to 0 so that every step is
deterministic, saved once and loaded by every backend), batch 8, 128 source tokens and, as a
second point that shows attention's cost, 512 source tokens; 32 target tokens. Some source rows
are padded and some labels are -100. Every backend runs the same AdamW (lr, betas, eps, weight
decay in ADAMW):

- ref: transformers' EncoderDecoderModel, a plain loop with torch.optim.AdamW;
- pt: encdec.pt, the same loop and optimizer;
- tf-step: encdec.tf, a `tf.function(jit_compile=True)` step (GradientTape, keras AdamW);
- tf-fit: encdec.tf, `model.compile(optimizer=AdamW)` with its defaults, then `model.fit` on a
  dataset of FIT_STEPS batches: a step is the epoch's time (from a callback, so fit's set-up is
  left out) over FIT_STEPS;
- flax: encdec.flax, an `nnx.jit` step (nnx.value_and_grad, nnx.Optimizer over optax.adamw).

Columns: ms/step (best of --steps timed steps after the first, compiling, step and --warmup
more), samples/s (batch / step time), ref ms/step (the reference's best step in the same
window, see below), vs ref (that over ours, > 1: we are faster), first s (the first step,
compile included), and at the first point the correctness checks, every backend starting from
the same weights on the same batch: the first step's loss and its relative difference from the
reference's (`same loss`: within LOSS_RTOL), and the largest |difference| of any parameter
after that step from the reference's (read back from `save_pretrained`), also in units of the
learning rate.

A bert-base training state (weights, gradients, two AdamW moments) is ~4 GB, so only the
reference and one other backend are alive at a time: each backend's timed steps alternate with
the reference's (ref, backend, ref, backend, ...), so that a change in machine load hits both
alike, and its `vs ref` uses the reference's best step of that same window (the ref row: its
best step over all windows). Each timed step follows an untimed step of the same backend: the
first XLA step after a torch step ran ~1.5x slower than the next one (flax, bert-base: 4.8 s
alone, 6.9-7.4 s right after a torch step), which timing alternate single steps charged to
the XLA backends.

Usage: python benchmarks/train.py [--tiny] [--backends ref,pt,tf-step,tf-fit,flax]
                                  [--src-len 128,512] [--steps N] [--warmup N]
`--tiny` (a few-kB model, 2 timed steps) is the CI smoke test; it still checks the losses.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from generate import build_reference, cpu_name  # noqa: E402  (benchmarks/generate.py)

BACKENDS = ("ref", "pt", "tf-step", "tf-fit", "flax")
ADAMW = dict(lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)  # every backend's AdamW
LOSS_RTOL = 1e-4  # first-step loss vs the reference's, relative
FIT_STEPS = 2  # batches per `model.fit` epoch for tf-fit


@dataclass(frozen=True)
class Size:
    batch: int
    src_lens: tuple[int, ...]
    tgt_len: int
    steps: int  # timed steps per backend and point (the best is kept)
    warmup: int  # untimed steps after the first one


FULL = Size(batch=8, src_lens=(128, 512), tgt_len=32, steps=3, warmup=1)
TINY = Size(batch=2, src_lens=(16,), tgt_len=8, steps=2, warmup=1)


def make_batch(vocab: int, batch: int, src_len: int, tgt_len: int, seed: int = 0
               ) -> dict[str, np.ndarray]:
    """Token ids away from the special ids; row i has i * src_len // (2 * batch) source
    positions padded (mask 0) and i * tgt_len // (2 * batch) trailing labels set to -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(vocab // 10, vocab, (batch, src_len))
    labels = rng.integers(vocab // 10, vocab, (batch, tgt_len))
    mask = np.ones_like(ids)
    for i in range(batch):
        mask[i, src_len - i * src_len // (2 * batch):] = 0
        labels[i, tgt_len - i * tgt_len // (2 * batch):] = -100
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


# --------------------------------------------------------------------------- the trainers
# Each: set_batch(numpy dict) once per point; step() -> the step's loss (a host float, so the
# step has finished); seconds() -> the time of one step; save(directory).


class TorchTrainer:
    """ref and pt: model.train(), torch.optim.AdamW, zero_grad / backward / step."""

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, model.train()
        self.opt = torch.optim.AdamW(model.parameters(), **ADAMW)

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = {k: self.torch.from_numpy(v) for k, v in batch.items()}

    def step(self) -> float:
        loss = self.model(**self.batch).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def seconds(self) -> float:
        t = time.perf_counter()
        self.step()
        return time.perf_counter() - t

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)


def keras_adamw():
    """Keras' AdamW with ADAMW's settings. Keras adds epsilon to sqrt(v) before the bias
    correction (the Adam paper's epsilon-hat), torch and optax after it: epsilon *
    sqrt(1 - beta_2) makes Keras' first step the same as theirs (later steps differ by a
    little less each step; the time of a step does not depend on it)."""
    import keras

    beta_1, beta_2 = ADAMW["betas"]
    return keras.optimizers.AdamW(learning_rate=ADAMW["lr"], weight_decay=ADAMW["weight_decay"],
                                  beta_1=beta_1, beta_2=beta_2,
                                  epsilon=ADAMW["eps"] * (1 - beta_2) ** 0.5)


class TFStepTrainer(TorchTrainer):
    """tf-step: one XLA-compiled tf.function: GradientTape, keras AdamW.apply_gradients.
    (encdec's embeddings give dense gradients, as torch's do, so Keras' Adam steps them as the
    reference's optimizer does; `encdec.tf.layers.Embedding`.)"""

    def __init__(self, model):
        import tensorflow as tf

        self.tf, self.model, self.opt = tf, model, keras_adamw()
        variables = model.trainable_variables
        self.opt.build(variables)

        @tf.function(jit_compile=True)
        def step(batch):
            with tf.GradientTape() as tape:
                loss = model(**batch, training=True).loss
            grads = tape.gradient(loss, variables)
            self.opt.apply_gradients(zip(grads, variables, strict=True))
            return loss

        self._step = step

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = {k: self.tf.constant(v.astype(np.int32)) for k, v in batch.items()}

    def step(self) -> float:
        return float(self._step(self.batch))


class TFFitTrainer(TorchTrainer):
    """tf-fit: `model.compile(optimizer=AdamW)` with Keras' defaults (no loss: the model returns
    its own), `model.fit` on a tf.data dataset of dicts."""

    def __init__(self, model):
        import keras
        import tensorflow as tf

        self.tf, self.model = tf, model
        model.compile(optimizer=keras_adamw())

        class EpochTimer(keras.callbacks.Callback):
            seconds = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds = time.perf_counter() - self.start

        self.timer = EpochTimer()

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = {k: v.astype(np.int32) for k, v in batch.items()}

    def _fit(self, n: int):
        ds = self.tf.data.Dataset.from_tensors(self.batch).repeat(n)  # n copies of the batch
        return self.model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[self.timer])

    def step(self) -> float:
        return float(self._fit(1).history["loss"][0])

    def seconds(self) -> float:
        self._fit(FIT_STEPS)
        return self.timer.seconds / FIT_STEPS


class FlaxTrainer(TorchTrainer):
    """flax: model.train(), nnx.Optimizer(optax.adamw), one nnx.jit step (model and optimizer
    state donated, so XLA updates them in place)."""

    def __init__(self, model):
        import jax.numpy as jnp
        import optax
        from flax import nnx

        self.jnp, self.model = jnp, model
        model.train()
        b1, b2 = ADAMW["betas"]
        self.opt = nnx.Optimizer(model, optax.adamw(ADAMW["lr"], b1=b1, b2=b2, eps=ADAMW["eps"],
                                                    weight_decay=ADAMW["weight_decay"]),
                                 wrt=nnx.Param)

        @nnx.jit(donate_argnames=("model", "optimizer"))
        def step(model, optimizer, batch):
            loss, grads = nnx.value_and_grad(lambda m: m(**batch).loss)(model)
            optimizer.update(model, grads)
            return loss

        self._step = step

    def set_batch(self, batch: dict[str, np.ndarray]) -> None:
        self.batch = {k: self.jnp.asarray(v, self.jnp.int32) for k, v in batch.items()}

    def step(self) -> float:
        return float(self._step(self.model, self.opt, self.batch))


def load_trainer(backend: str, directory: Path):
    if backend in ("ref", "pt"):
        if backend == "ref":
            from transformers import EncoderDecoderModel
        else:
            from encdec.pt import EncoderDecoderModel
        return TorchTrainer(EncoderDecoderModel.from_pretrained(directory))
    if backend.startswith("tf"):
        from encdec.tf import EncoderDecoderModel

        model = EncoderDecoderModel.from_pretrained(directory)
        return (TFStepTrainer if backend == "tf-step" else TFFitTrainer)(model)
    from encdec.flax import EncoderDecoderModel

    return FlaxTrainer(EncoderDecoderModel.from_pretrained(directory))


def max_param_diff(a: Path, b: Path) -> float:
    """The largest |difference| of any tensor of two checkpoints (which must hold the same
    names and shapes)."""
    from encdec.core.checkpoint import open_state_dict

    with open_state_dict(a) as ra, open_state_dict(b) as rb:
        if set(ra) != set(rb):
            raise SystemExit(f"{a} and {b} hold different names: "
                             f"{sorted(set(ra) ^ set(rb))[:5]}")
        diff = 0.0
        for key in ra:
            x, y = ra[key], rb[key]
            if x.shape != y.shape:
                raise SystemExit(f"{key}: shapes {x.shape} and {y.shape}")
            diff = max(diff, float(np.abs(x.astype(np.float64) - y).max(initial=0.0)))
        return diff


# --------------------------------------------------------------------------- the run


def bench(size: Size, backends: list[str], tiny: bool, workdir: Path) -> list[dict]:
    import torch

    reference = build_reference("bert2bert", tiny)
    for config in (reference.config.encoder, reference.config.decoder,
                   reference.encoder.config, reference.decoder.config):
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    n_params = sum(p.numel() for p in reference.parameters()) / 1e6
    init = workdir / "init"
    reference.save_pretrained(init)  # what every backend (the reference too) loads
    vocab = reference.config.decoder.vocab_size
    del reference
    batches = {n: make_batch(vocab, size.batch, n, size.tgt_len) for n in size.src_lens}
    print(f"\n## bert2bert: {n_params:.3g}M parameters, batch {size.batch}, source "
          f"{'/'.join(map(str, size.src_lens))} tokens, target {size.tgt_len}; AdamW "
          f"lr {ADAMW['lr']:g}, betas {ADAMW['betas']}, eps {ADAMW['eps']:g}, "
          f"weight decay {ADAMW['weight_decay']:g}; dropout 0")

    ref = load_trainer("ref", init)
    first = size.src_lens[0]
    ref.set_batch(batches[first])
    t = time.perf_counter()
    ref_loss = ref.step()
    ref_first = time.perf_counter() - t
    ref.save(workdir / "ref-step1")
    ref_moved = max_param_diff(init, workdir / "ref-step1")  # how far one step moves a weight
    ref_best: dict[int, float] = {}
    results = []
    for backend in [b for b in backends if b != "ref"]:
        trainer = load_trainer(backend, init)
        for n in size.src_lens:
            trainer.set_batch(batches[n])
            t = time.perf_counter()
            loss = trainer.step()
            row = dict(backend=backend, src_len=n, first=time.perf_counter() - t)
            if n == first:  # from the same weights on the same batch as the reference's step
                trainer.save(workdir / "step1")
                row.update(loss=loss, rel=abs(loss - ref_loss) / abs(ref_loss),
                           params=max_param_diff(workdir / "ref-step1", workdir / "step1"))
                shutil.rmtree(workdir / "step1")
            for _ in range(size.warmup):
                trainer.step()
            ref.set_batch(batches[n])
            if n not in ref_best:
                ref.step()  # the reference's warm-up at this shape
                ref_best[n] = float("inf")
            mine = theirs = float("inf")
            for _ in range(size.steps):  # alternating, so that load changes hit both alike;
                # each timed step follows an untimed one of the same backend: the first XLA
                # step after a torch step runs slower (flax: 4.8 s alone, 6.9-7.4 s right
                # after a torch step, measured 2026-12-03)
                ref.step()
                theirs = min(theirs, ref.seconds())
                trainer.step()
                mine = min(mine, trainer.seconds())
            ref_best[n] = min(ref_best[n], theirs)
            row.update(ms=mine * 1e3, ref_ms=theirs * 1e3, vs=theirs / mine)
            if backend == "tf-fit":
                row["note"] = f"jit_compile={trainer.model.jit_compile}"
            results.append(row)
            print(f"  {backend} at {n} source tokens: {mine * 1e3:.0f} ms/step "
                  f"(ref {theirs * 1e3:.0f} in the same window)", flush=True)
        del trainer
        gc.collect()
    for n in size.src_lens:
        best = ref_best.get(n, float("nan")) * 1e3
        row = dict(backend="ref", src_len=n, ms=best, ref_ms=best, vs=1.0)
        if n == first:
            row.update(first=ref_first, loss=ref_loss, rel=0.0, params=0.0)
        results.insert(0, row)
    results.sort(key=lambda r: (r["src_len"], BACKENDS.index(r["backend"])))

    lr = ADAMW["lr"]
    print(f"\none step moves a reference weight by up to {ref_moved:.3g} ({ref_moved / lr:.2f} lr)")
    print("| backend | source | ms/step | samples/s | ref ms/step | vs ref | first s | loss "
          "| loss rel diff | same loss | params max diff | in lr |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        checked = "loss" in r
        print(f"| {r['backend']} | {r['src_len']} | {r['ms']:.0f} | "
              f"{size.batch * 1e3 / r['ms']:.2f} | {r['ref_ms']:.0f} | {r['vs']:.2f} | "
              + (f"{r['first']:.1f} | " if "first" in r else "- | ")
              + (f"{r['loss']:.6f} | {r['rel']:.1e} | {'yes' if r['rel'] <= LOSS_RTOL else 'no'} "
                 f"| {r['params']:.2e} | {r['params'] / lr:.3f} |" if checked
                 else "- | - | - | - | - |"))
    for r in results:
        if "note" in r and r["src_len"] == first:
            print(f"{r['backend']}: {r['note']} (Keras' default for compile on a CPU-only machine)")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model: the CI smoke test")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help=f"comma-separated subset of {','.join(BACKENDS)}")
    ap.add_argument("--src-len", help="comma-separated source lengths (default 128,512; tiny 16)")
    ap.add_argument("--steps", type=int, help="timed steps per backend and length (best kept)")
    ap.add_argument("--warmup", type=int, help="untimed steps after the first (compiling) one")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if unknown := sorted(set(backends) - set(BACKENDS)):
        ap.error(f"unknown backends: {unknown} (known: {', '.join(BACKENDS)})")
    size = TINY if args.tiny else FULL
    src_lens = tuple(map(int, args.src_len.split(","))) if args.src_len else size.src_lens
    limit = 64 if args.tiny else 512  # the models' max_position_embeddings
    if not src_lens or not all(1 <= n <= limit for n in src_lens):
        ap.error(f"--src-len {args.src_len}: every length must be in 1..{limit}")
    for name in ("steps", "warmup"):
        if (value := getattr(args, name)) is not None and value < (name == "steps"):
            ap.error(f"--{name} {value}: must be >= {int(name == 'steps')}")
    size = Size(size.batch, src_lens, size.tgt_len,
                size.steps if args.steps is None else args.steps,
                size.warmup if args.warmup is None else args.warmup)
    warnings.filterwarnings("ignore")

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    print(f"# encdec training-step benchmark: {cpu_name()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        results = bench(size, backends, args.tiny, Path(d))
    bad = [r["backend"] for r in results if "rel" in r and not r["rel"] <= LOSS_RTOL]
    if bad:
        print(f"first-step loss differs from the reference's by more than {LOSS_RTOL:g} "
              f"(relative): {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
