"""The harness over (architecture pair x backend) against transformers' PyTorch
`EncoderDecoderModel` (issue 8): every pair of `tests.conftest.PAIRS` in every backend —
logits and loss, cached decoding, saving (bit-identical tensors, transformers loads it),
greedy and 4-beam generation, and RoBERTa's position limit. Written once, parametrised."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core import EncoderDecoderConfig
from encdec.core.registry import max_positions
from tests import tolerances as tol
from tests.conftest import PAIRS, pair_batch
from tests.generation import oracle
from tests.harness.backends import ADAPTERS, _numpy

NAMES = list(PAIRS)
BACKENDS = list(ADAPTERS)
REFERENCE_OUTPUTS = ("logits", "loss", "encoder_last_hidden_state")


def batch(name: str) -> dict[str, np.ndarray]:
    """Pair `name`'s padded batch: labels with -100 and a padded decoder mask."""
    b = pair_batch(name, seed=1)
    b["decoder_attention_mask"] = np.ones_like(b["decoder_input_ids"])
    b["decoder_attention_mask"][1, -2:] = 0
    return b


def torch_forward(model, inputs: dict[str, np.ndarray], **kw) -> dict[str, np.ndarray]:
    """A transformers model's forward on numpy inputs -> numpy `REFERENCE_OUTPUTS`."""
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}, **kw)
    return {k: _numpy(out[k]) for k in REFERENCE_OUTPUTS if out.get(k) is not None}


@functools.cache
def reference_outputs(name: str) -> dict[str, np.ndarray]:
    return torch_forward(oracle.reference(name), batch(name))


@functools.cache
def reference_tokens(name: str, beams: int) -> tuple[int, np.ndarray]:
    """(eos id, the reference's tokens): 8 new tokens, eos chosen so that rows stop early."""
    ref = oracle.reference(name)
    x, a = oracle.batch(0, name=name)
    eos = oracle.eos_at_step(ref, x, a)
    return eos, oracle.hf_generate(ref, x, a, eos_token_id=eos, max_new_tokens=8,
                                   num_beams=beams)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_logits_and_loss(ours, adapters, name, backend):
    got = adapters[backend].forward(ours(name, backend), batch(name))
    want = reference_outputs(name)
    assert want.keys() <= got.keys()
    for key in want:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{name} {backend} {key}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_matches_full_forward(ours, adapters, name, backend):
    ad, model = adapters[backend], ours(name, backend)
    b = pair_batch(name, seed=2)
    del b["labels"]
    full = ad.forward(model, b)["logits"]
    ids, n = b["decoder_input_ids"], b["decoder_input_ids"].shape[1]
    inputs = ad.inputs({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    past, encoder_outputs, steps = None, None, []
    for t in range(n):
        step = ad.inputs({"decoder_input_ids": ids[:, t:t + 1]})
        out = model(**inputs, **step, encoder_outputs=encoder_outputs, past_key_values=past,
                    use_cache=True)
        past, encoder_outputs = out.past_key_values, (out.encoder_last_hidden_state,)
        steps.append(_numpy(out.logits))
    tol.assert_close(np.concatenate(steps, axis=1), full, tol.CACHE, f"{name} {backend} cache")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_loads_what_we_save(ours, adapters, name, backend, tmp_path):
    """Our save holds the checkpoint's tensors bit for bit, and transformers loads it."""
    import transformers as tr

    adapters[backend].save(ours(name, backend), tmp_path)
    source = load_file(f"{oracle.checkpoint(name)}/model.safetensors")
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == source.keys()
    for k in source:
        assert saved[k].dtype == source[k].dtype and np.array_equal(saved[k], source[k]), k
    ref = tr.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ref.config.decoder.model_type == PAIRS[name].decoder
    got, want = torch_forward(ref, batch(name)), reference_outputs(name)
    for key in want:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{name} {backend} reloaded {key}")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_generate_greedy_and_beam(ours, adapters, name, backend):
    x, a = oracle.batch(0, name=name)
    for beams in (1, 4):
        eos, want = reference_tokens(name, beams)
        got = adapters[backend].generate(ours(name, backend), x, a, eos_token_id=eos,
                                         max_new_tokens=8, num_beams=beams)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {backend} beams={beams}")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", BACKENDS)
def test_against_hf_position_limit(ours, adapters, backend):
    """RoBERTa's positions start at pad + 1: exactly `max_positions` tokens work on either side
    (as in transformers), one more is a ValueError naming the limit — in forward and generate."""
    name = "roberta2roberta"
    ad, model, ref = adapters[backend], ours(name, backend), oracle.reference(name)
    config = EncoderDecoderConfig.from_pretrained(oracle.checkpoint(name))
    n = max_positions(config.encoder)
    assert n == max_positions(config.decoder) == config.encoder.max_position_embeddings - 2
    rng = np.random.default_rng(0)
    edge = dict(input_ids=rng.integers(4, 99, (2, n)),
                decoder_input_ids=rng.integers(4, 99, (2, n)))
    tol.assert_close(ad.forward(model, edge)["logits"], torch_forward(ref, edge)["logits"],
                     tol.FORWARD, f"{backend} {n} positions")
    limit = rf"\b{n}\b"
    for side in edge:
        over = dict(edge, **{side: rng.integers(4, 99, (2, n + 1))})
        with pytest.raises(ValueError, match=limit):
            ad.forward(model, over)
    # generate: an n-token source and a decoder that reaches exactly n positions
    x = edge["input_ids"]
    want = oracle.hf_generate(ref, x, None, max_new_tokens=n - 1, eos_token_id=None)
    np.testing.assert_array_equal(
        ad.generate(model, x, None, max_new_tokens=n - 1, eos_token_id=None), want)
    with pytest.raises(ValueError, match=limit):
        ad.generate(model, x, None, max_new_tokens=n, eos_token_id=None)
    with pytest.raises(ValueError, match=limit):
        ad.generate(model, rng.integers(4, 99, (2, n + 1)), None, max_new_tokens=2)
