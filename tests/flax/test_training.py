"""Training: gradients (nnx.grad) of the loss equal transformers' (DESIGN.md bound 1e-4), a few
optax AdamW steps through nnx.Optimizer under nnx.jit lower the loss, and the model's state
splits and merges as a pytree."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from encdec.core.weights import Dialect, from_dialect, leaf
from encdec.flax import EncoderDecoderModel
from tests.conftest import make_batch, pair_batch

from .conftest import max_diff, to_torch

GRAD_TOL = 1e-4


def _loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj", "roberta2roberta",
                                  "electra2electra", "distilbert2gpt2"])
def test_against_hf_gradients(name, reference_dir, hf_model):
    """Every parameter's gradient (tied ones summed over their uses, as in the reference:
    RoBERTa's `lm_head.bias` is also its decoder's bias)."""
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)
    b = pair_batch(name, seed=8)
    del b["decoder_input_ids"]  # shifted from the labels, on both sides
    ref.zero_grad()
    r = ref(**to_torch(b))
    r.loss.backward()
    loss, grads = nnx.jit(nnx.value_and_grad(_loss))(ours, b)
    assert abs(r.loss.item() - float(loss)) < 1e-5
    flat = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(grads)}
    ref_grads = dict(ref.named_parameters())
    table = ours.table()
    assert len(flat) == len(table.owned)
    for p in table.owned:
        g = from_dialect(p, np.asarray(flat[leaf(p, Dialect.NNX)]), Dialect.NNX)
        ref_g = ref_grads[p.name].grad  # None: unused by the loss (the encoder's pooler)
        assert max_diff(0 * g if ref_g is None else ref_g, g) < GRAD_TOL, p.name


def test_adamw_steps_under_nnx_jit_lower_the_loss(reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
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


def test_split_merge_round_trip(reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert_proj"))
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])
    graphdef, state = nnx.split(model)
    leaves = jax.tree.leaves(state)
    params = nnx.state(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == len(model.table().owned)
    again = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    assert type(again) is EncoderDecoderModel and again.config is model.config
    assert max_diff(model(**kw).logits, again(**kw).logits) == 0.0
    # through jax.jit as a plain pytree
    logits = jax.jit(lambda s: nnx.merge(graphdef, s)(**kw).logits)(state)
    assert max_diff(model(**kw).logits, logits) < 1e-6
    assert len(leaves) == len(jax.tree.leaves(nnx.split(again)[1]))
