"""Training: gradients equal transformers' (bound 1e-4), AdamW lowers the loss, gradient
checkpointing gives the same gradients."""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from encdec.pt.layers import Attention
from tests.conftest import make_batch, pair_batch

from .conftest import to_torch

GRAD_TOL = 1e-4


def _grads(model, batch, **kw):
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], **kw)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None}


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj", "roberta2roberta",
                                  "distilbert2bert", "electra2electra", "bert2bart_proj"])
def test_against_hf_gradients(name, reference_dir, hf_model):
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)  # eval: dropout off
    batch = to_torch(pair_batch(name))
    ref_loss, ref_grads = _grads(ref, batch)
    loss, grads = _grads(ours, batch)
    assert abs(ref_loss - loss) < 1e-5
    # transformers' named_parameters lists a tied tensor once, under its source's name
    assert set(ref_grads) == set(grads)
    for n, g in grads.items():
        assert (g - ref_grads[n]).abs().max().item() < GRAD_TOL, n


def test_adamw_lowers_the_loss(reference_dir):
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    model.train()
    batch = to_torch(make_batch())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "distilbert2gpt2", "electra2electra",
                                  "roberta2mbart"])
def test_gradient_checkpointing_same_gradients(name, reference_dir, monkeypatch):
    import encdec.pt.bart
    import encdec.pt.bert
    import encdec.pt.distilbert
    import encdec.pt.gpt2

    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    for m in model.modules():  # training mode without dropout: deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for m in model.modules():  # attention-probability dropout is a float on `Attention`
        if isinstance(m, Attention):
            m.dropout = 0.0
    model.train()
    batch = to_torch(pair_batch(name))
    loss, grads = _grads(model, batch)
    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(kwargs["use_reentrant"])
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    for module in (encdec.pt.bart, encdec.pt.bert, encdec.pt.distilbert, encdec.pt.gpt2):
        monkeypatch.setattr(module, "checkpoint", counting)
    model.gradient_checkpointing_enable()
    loss_ckpt, grads_ckpt = _grads(model, batch)
    assert calls == [False] * 4  # 2 encoder + 2 decoder layers, non-reentrant
    assert loss == loss_ckpt
    for n, g in grads.items():
        assert (g - grads_ckpt[n]).abs().max().item() < 1e-6, n
    model.eval()  # inference: no checkpointing
    with torch.no_grad():
        model(input_ids=batch["input_ids"], labels=batch["labels"])
    assert len(calls) == 4
