"""Every backend's gradients of the loss against transformers' (tests/tolerances.py's GRAD): every
owned parameter, tied ones summed over their uses, labels shifted into the decoder's input on
both sides. (Backend pairs on a sample of parameters: test_parity.py; one optimizer step and
generate after it: tests/generation/test_updated_weights.py; each framework's own training
loop — Keras `fit`, `nnx.jit` + optax, torch's gradient checkpointing — in its folder.)"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests import tolerances as tol
from tests.conftest import pair_batch
from tests.generation import oracle

# one pair per code path: BERT, GPT-2 with a projection, RoBERTa (tied head bias), DistilBERT,
# ELECTRA (embedding projection), BART with a projection
NAMES = ["bert2bert", "bert2gpt2_proj", "roberta2roberta", "distilbert2bert", "distilbert2gpt2",
         "electra2electra", "bert2bart_proj"]


def batch(name: str) -> dict[str, np.ndarray]:
    """Pair `name`'s padded batch with labels (-100 included) and no decoder input ids."""
    b = pair_batch(name, seed=8)
    del b["decoder_input_ids"]
    return b


@functools.cache
def reference_grads(name: str) -> tuple[float, dict[str, np.ndarray]]:
    """The reference's loss, and its gradients by parameter name (a tied tensor once, under its
    source's name; parameters the loss does not use, the encoder's pooler, left out)."""
    import torch
    import transformers as tr

    ref = tr.EncoderDecoderModel.from_pretrained(oracle.checkpoint(name)).eval()
    loss = ref(**{k: torch.from_numpy(v) for k, v in batch(name).items()}).loss
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in ref.named_parameters()
                         if p.grad is not None}


# flax's eager gradients are the slowest to warm up: CI (flax's against pt's in the fast
# subset: test_parity.py's test_gradient_parity[bert2bert])
@pytest.mark.parametrize("backend", ["pt", "tf", pytest.param("flax", marks=pytest.mark.slow)],
                         indirect=True)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_gradients(ours, backend, name):
    model, (loss, want) = ours(name, backend.name), reference_grads(name)
    tol.assert_close(backend.forward(model, batch(name))["loss"], loss, tol.FORWARD,
                     f"{name} {backend.name} loss")
    got = backend.grads(model, batch(name), model.table().owned)
    assert set(want) <= set(got)
    for n, g in got.items():  # what the loss does not use (the encoder's pooler): zero
        tol.assert_close(g, want.get(n, 0 * g), tol.GRAD, f"{name} {backend.name} grad {n}")
