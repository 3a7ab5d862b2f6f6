"""What only Flax has of the BART-family causal LM (issue 9): legacy `past_key_values` under
`nnx.jit`. The causal LM against transformers in every backend, eagerly (dropout and LayerDrop
included): tests/harness/test_causal_lm.py; a BART decoder in the compiled static-cache loop:
`generate` in tests/harness/test_architectures.py; its training mode under `nnx.jit` (fresh
dropout and LayerDrop masks per call of the compiled step, bert2bart):
tests/generation/test_updated_weights.py."""

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

