"""What only Flax has of the BART-family causal LM (issue 9): legacy `past_key_values` and the
training mode under `nnx.jit` (fresh dropout masks per call of the compiled step). The causal LM
against transformers in every backend, eagerly: tests/harness/test_causal_lm.py; a BART decoder
in the jitted static-cache loop: tests/flax/test_decoding.py."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import encdec.flax
from encdec.core.registry import architecture
from tests import tolerances as tol
from tests.harness.test_causal_lm import inputs, reference_lm

pytestmark = pytest.mark.slow  # the same code eagerly, in the fast subset: test_causal_lm.py


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """arch -> directory of transformers' tiny causal LM save (test_causal_lm's reference)."""
    out = {}

    def get(arch: str):
        if arch not in out:
            out[arch] = tmp_path_factory.mktemp(arch)
            reference_lm(arch).save_pretrained(out[arch])
        return out[arch]

    return get


def jnp_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


# learned positions (BART) and a fixed sinusoidal table (Pegasus), read at an offset under jit
@pytest.mark.parametrize("arch", ["bart", "pegasus"])
def test_incremental_decoding_under_nnx_jit(saved, arch):
    """A 3-token prefix, then one token at a time through `past_key_values` (self and cross
    K/V), under `nnx.jit`, equals one full forward."""
    model = getattr(encdec.flax, architecture(arch).lm_class).from_pretrained(saved(arch))
    b = jnp_batch(inputs(2))
    del b["labels"], b["attention_mask"]
    full = model(**b).logits
    ids = b.pop("input_ids")

    @nnx.jit
    def run(m, ids, past):
        return m(input_ids=ids, **b, past_key_values=past, use_cache=True)

    out = run(model, ids[:, :3], None)
    steps, past = [out.logits], out.past_key_values
    assert len(past) == 2 and len(past[0]) == 4 and past[0][0].shape == (3, 4, 3, 8)
    for t in range(3, ids.shape[1]):
        out = run(model, ids[:, t:t + 1], past)
        steps.append(out.logits)
        past = out.past_key_values
    tol.assert_close(np.concatenate(steps, axis=1), np.asarray(full), tol.CACHE, f"{arch} jit")


def test_training_mode_under_nnx_jit(saved):
    """Dropout (hidden, attention, activation) and LayerDrop in train mode under `nnx.jit`:
    a finite loss and gradient, fresh dropout masks per call; eval mode deterministic again."""
    model = encdec.flax.BartForCausalLM.from_pretrained(
        saved("bart"), rngs=nnx.Rngs(0, dropout=1), dropout=0.2, attention_dropout=0.2,
        activation_dropout=0.2, decoder_layerdrop=0.5)
    b = jnp_batch(inputs(5))
    before = model(**b).logits
    model.train()
    step = nnx.jit(nnx.value_and_grad(lambda m, x: m(**x).loss))
    (l1, g1), (l2, _) = step(model, b), step(model, b)
    assert np.isfinite(float(l1)) and float(l1) != float(l2)  # fresh dropout masks per call
    leaves = [np.asarray(v[...]) for _, v in nnx.to_flat_state(g1)]
    assert all(np.isfinite(x).all() for x in leaves) and any(np.abs(x).max() > 0 for x in leaves)
    model.eval()
    np.testing.assert_array_equal(model(**b).logits, before)
