"""Backbones alone (`BertModel`, `BertLMHeadModel`, `GPT2Model`, `GPT2LMHeadModel`) in every
backend: loaded from transformers' single-model saves and equal to transformers' same classes,
saved so that transformers loads them back, and the checkpoint quirks the readers accept (with
or without the `bert.` / `transformer.` prefix, legacy LayerNorm `gamma`/`beta`, BERT's
`position_ids` and GPT-2's `attn.bias` buffers, a head missing from a base checkpoint, a head
checkpoint read by a base model). (Warm start of a composite: tests/harness/test_warm_start.py.)
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests import tolerances as tol
from tests.conftest import tiny_kwargs
from tests.harness.backends import ADAPTERS, _numpy
from tests.harness.test_warm_start import Singles, reference

HEAD, WORDS = "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Singles:
    """class name -> transformers' save of a tiny model of that class."""
    return Singles(tmp_path_factory.mktemp("backbones"))


def backends(*slow: str) -> list:
    """Every backend for the `backend` fixture, those in `slow` declared slow."""
    return [pytest.param(b, marks=pytest.mark.slow) if b in slow else b for b in ADAPTERS]


def rewrite(src, dst, rename, extra=None):
    """Copy checkpoint `src` to `dst`, renaming its keys (dropping those renamed to None) and
    adding `extra` tensors."""
    shutil.copytree(src, dst)
    state = {rename(k): v for k, v in load_file(src / "model.safetensors").items()}
    state = {k: v for k, v in state.items() if k is not None} | (extra or {})
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})


def run(backend, model, **inputs):
    """A backbone's forward on numpy inputs (the backend's tensors in, outputs as given)."""
    return model(**backend.inputs(inputs))


QUIRKS = {  # name -> (a key's rename, extra tensors)
    "prefixed": (lambda k: "bert." + k, {}),
    "legacy_gamma_beta": (lambda k: k.replace(".weight", ".gamma").replace(".bias", ".beta")
                          if "LayerNorm" in k else k, {}),
    "position_ids": (lambda k: k,
                     {"embeddings.position_ids": np.arange(64, dtype=np.int64)[None]}),
}
QUIRKS["all"] = (lambda k: QUIRKS["legacy_gamma_beta"][0]("bert." + k),
                 {"bert.embeddings.position_ids": np.arange(64, dtype=np.int64)[None]})


# each quirk alone in tf and flax: CI (all of them at once in every backend, and each alone in
# pt, stay fast)
@pytest.mark.parametrize("backend, quirk", [
    pytest.param(b, q, marks=pytest.mark.slow) if q != "all" and b != "pt" else (b, q)
    for b in ADAPTERS for q in QUIRKS], indirect=["backend"])
def test_bert_base_checkpoint_quirks(backend, single, quirk, tmp_path):
    """A base BERT checkpoint with a quirk loads as the original; in a decoder, the heads and
    the cross-attention are what transformers initialises, the LM head tied to the words."""
    rename, extra = QUIRKS[quirk]
    rewrite(single["BertModel"], tmp_path / "ckpt", rename, extra)
    m = backend.module
    want = backend.state(m.BertModel.from_pretrained(single["BertModel"]))
    model, report = m.BertModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == []
    got = backend.state(model)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    dec, report = m.BertLMHeadModel.from_pretrained(
        tmp_path / "ckpt", is_decoder=True, add_cross_attention=True, output_loading_info=True)
    assert set(report.missing) == reference(single["BertModel"], "decoder")[1]
    head = backend.variable(dec, HEAD)  # tied: the word embeddings (Keras, NNX: no variable)
    assert head is None or head is backend.variable(dec, WORDS)
    np.testing.assert_array_equal(backend.state(dec)[WORDS], want[WORDS.removeprefix("bert.")])


@pytest.mark.parametrize("backend", backends("flax"), indirect=True)  # flax: CI; pt, tf: same
def test_gpt2_checkpoint_quirks(backend, single, tmp_path):
    """Old GPT-2 checkpoints: `attn.bias`/`attn.masked_bias` buffers, a base model without the
    `transformer.` prefix, and a base checkpoint in a head model (lm_head tied, not missing)."""
    n_layer = 2
    extra = {f"h.{i}.{name}": value for i in range(n_layer) for name, value in (
        ("attn.bias", np.tril(np.ones((64, 64), np.float32))[None, None]),
        ("attn.masked_bias", np.array(-1e4, np.float32)))}
    full_dir = single["GPT2LMHeadModel"]
    rewrite(full_dir, tmp_path / "ckpt",
            lambda k: k.removeprefix("transformer.") if k != "lm_head.weight" else None, extra)
    m = backend.module
    base, report = m.GPT2Model.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == [] and len(report.ignored) == 2 * n_layer
    lm, report = m.GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == []
    head = backend.variable(lm, "lm_head.weight")  # tied: wte
    assert head is None or head is backend.variable(lm, "transformer.wte.weight")
    full = m.GPT2LMHeadModel.from_pretrained(full_dir)
    ids = np.random.default_rng(0).integers(0, 99, (2, 7))
    tol.assert_close(_numpy(run(backend, lm, input_ids=ids).logits),
                     _numpy(run(backend, full, input_ids=ids).logits), 0.0, "logits")
    tol.assert_close(_numpy(run(backend, base, input_ids=ids).last_hidden_state),
                     _numpy(run(backend, full.transformer, input_ids=ids).last_hidden_state),
                     0.0, "hidden")
    # transformers stores the tied lm_head once (as wte): nothing for a base model to drop
    _, report = m.GPT2Model.from_pretrained(full_dir, output_loading_info=True)
    assert report.dropped == [] and report.missing == []


def test_head_checkpoint_in_base_model_drops_and_reports_head(backend, single, tmp_path):
    m = backend.module
    m.BertLMHeadModel.from_pretrained(single["BertModel"], is_decoder=True).save_pretrained(
        tmp_path / "lm")
    _, report = m.BertModel.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert sorted(report.dropped) == sorted(
        k for k in load_file(tmp_path / "lm" / "model.safetensors") if k.startswith("cls."))
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]


# an untied head in pt and flax: CI (tf's stays fast; the tied head in every backend too)
@pytest.mark.parametrize("backend, tied", [
    pytest.param(b, t, marks=pytest.mark.slow) if not t and b != "tf" else (b, t)
    for b in ADAPTERS for t in (True, False)], indirect=["backend"])
def test_against_hf_backbones_and_save_round_trip(backend, single, tied, tmp_path):
    """BertModel and GPT2LMHeadModel (tied or untied LM head) against transformers' same
    classes: outputs, GPT-2's loss; our save loads in transformers with the same logits and the
    same keys as its own save (an untied `lm_head.weight` under the reference's name)."""
    import torch
    import transformers as tr

    ids = np.random.default_rng(1).integers(4, 99, (2, 9))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    t = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    m = backend.module
    if tied:  # the BERT base model once
        with torch.no_grad():
            want = tr.BertModel.from_pretrained(single["BertModel"]).eval()(**t)
        got = run(backend, m.BertModel.from_pretrained(single["BertModel"]),
                  input_ids=ids, attention_mask=mask)
        for name in ("last_hidden_state", "pooler_output"):
            tol.assert_close(_numpy(getattr(got, name)), getattr(want, name).numpy(),
                             tol.FORWARD, name)
        src = single["GPT2LMHeadModel"]
    else:
        torch.manual_seed(1)
        src = tmp_path / "ref"
        config = tr.AutoConfig.for_model("gpt2", **tiny_kwargs("gpt2"), tie_word_embeddings=False)
        tr.GPT2LMHeadModel(config).eval().save_pretrained(src)
    ref = tr.GPT2LMHeadModel.from_pretrained(src).eval()
    model = m.GPT2LMHeadModel.from_pretrained(src)
    with torch.no_grad():
        want = ref(**t, labels=t["input_ids"])
    got = run(backend, model, input_ids=ids, attention_mask=mask, labels=ids)
    tol.assert_close(_numpy(got.logits), want.logits.numpy(), tol.FORWARD, "gpt2 logits")
    tol.assert_close(_numpy(got.loss), want.loss.numpy(), tol.FORWARD, "gpt2 loss")
    model.save_pretrained(tmp_path / "ours")
    again = tr.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        tol.assert_close(again(t["input_ids"]).logits.numpy(),
                         _numpy(run(backend, model, input_ids=ids).logits), tol.FORWARD, "saved")
    ours, theirs = (load_file(d / "model.safetensors") for d in (tmp_path / "ours", src))
    assert ours.keys() == theirs.keys()
    if not tied:
        np.testing.assert_array_equal(ours["lm_head.weight"], theirs["lm_head.weight"])
