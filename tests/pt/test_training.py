"""What only PyTorch has in training: gradient checkpointing (non-reentrant, one call per
layer, in training mode only) gives the same loss and gradients. (Gradients against the
reference in every backend: tests/harness/test_training.py; an AdamW step:
tests/generation/test_updated_weights.py.)"""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from encdec.pt.layers import Attention
from tests.conftest import pair_batch
from tests.generation import oracle


def _grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


# each family's layers (BERT-like, GPT-2, DistilBERT, BART); bert2bert in the fast subset (the
# others: the same `checkpoint` call, in their family's file)
@pytest.mark.parametrize("name", ["bert2bert", pytest.param("bert2gpt2", marks=pytest.mark.slow),
                                  "distilbert2gpt2", "electra2electra", "roberta2mbart"])
def test_gradient_checkpointing_same_gradients(name, monkeypatch):
    import encdec.pt.bart
    import encdec.pt.bert
    import encdec.pt.distilbert
    import encdec.pt.gpt2

    model = EncoderDecoderModel.from_pretrained(oracle.checkpoint(name))
    for m in model.modules():  # training mode without dropout: deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, Attention):  # attention-probability dropout is a float on `Attention`
            m.dropout = 0.0
    model.train()
    b = pair_batch(name)
    batch = {k: torch.from_numpy(b[k]) for k in ("input_ids", "attention_mask", "labels")}
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
