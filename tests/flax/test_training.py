"""What only Flax NNX has in training: optax AdamW steps through `nnx.Optimizer` under
`nnx.jit` lower the loss, and the model's state splits and merges as a pytree. (Gradients
against the reference in every backend: tests/harness/test_training.py.)"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from encdec.flax import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import make_batch
from tests.generation import oracle


def _loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


# CI: a compile of the whole training step (one optimizer step in every backend in the fast
# subset: tests/generation/test_updated_weights.py)
@pytest.mark.slow
def test_adamw_steps_under_nnx_jit_lower_the_loss():
    model = EncoderDecoderModel.from_pretrained(oracle.checkpoint("bert2gpt2"))
    b = make_batch(seed=9)
    before = float(_loss(model, b))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
    model.train()  # dropout on while training

    @nnx.jit
    def train_step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(_loss)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, b)) for _ in range(5)]
    model.eval()
    after = float(_loss(model, b))
    assert np.isfinite(losses).all()
    assert after < before - 0.1, (before, after, losses)
    assert int(optimizer.step[...]) == 5


@pytest.mark.slow  # CI: nnx.split / merge also run inside every nnx.jit of the fast subset
def test_split_merge_round_trip():
    model = EncoderDecoderModel.from_pretrained(oracle.checkpoint("bert2bert_proj"))
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])
    graphdef, state = nnx.split(model)
    leaves = jax.tree.leaves(state)
    assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == len(model.table().owned)
    again = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    assert type(again) is EncoderDecoderModel and again.config is model.config
    assert tol.max_abs_diff(model(**kw).logits, again(**kw).logits) == 0.0
    # through jax.jit as a plain pytree
    logits = jax.jit(lambda s: nnx.merge(graphdef, s)(**kw).logits)(state)
    tol.assert_close(logits, model(**kw).logits, tol.FORWARD, "logits through jax.jit")
    assert len(leaves) == len(jax.tree.leaves(nnx.split(again)[1]))
