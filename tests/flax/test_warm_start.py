"""Warm starting from single-model checkpoints (transformers-saved and the real MiniLM), the
backbones' own from_pretrained/save_pretrained, and the checkpoint quirks the readers accept."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encdec.core.weights import Dialect, export_state
from encdec.flax import (
    BertLMHeadModel,
    BertModel,
    EncoderDecoderModel,
    GPT2LMHeadModel,
    GPT2Model,
    params,
)
from tests import tolerances as tol
from tests.conftest import TINY

from .conftest import max_diff, to_torch

TOL = 1e-5
GPT2_TINY = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                 eos_token_id=3)


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """A transformers BertModel and GPT2LMHeadModel saved with save_pretrained."""
    import torch
    import transformers as tr

    d = tmp_path_factory.mktemp("singles")
    torch.manual_seed(0)
    tr.BertModel(tr.BertConfig(**TINY, hidden_size=32)).save_pretrained(d / "bert")
    tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2_TINY)).save_pretrained(d / "gpt2")
    return d


def reference_missing(directory) -> set[str]:
    """transformers' newly initialised weights of the decoder built from `directory` (a tied
    weight whose source is missing is listed under both names, by the reference and by us)."""
    import transformers as tr

    config = tr.AutoConfig.from_pretrained(directory, is_decoder=True, add_cross_attention=True)
    _, info = tr.AutoModelForCausalLM.from_pretrained(directory, config=config,
                                                      output_loading_info=True)
    return set(info["missing_keys"])


def canonical_state(model) -> dict[str, np.ndarray]:
    """The model's weights under the reference's names and layouts."""
    return dict(export_state(model.table(), functools.partial(params.get, model), Dialect.NNX))


@pytest.mark.parametrize("decoder", ["bert", "gpt2"])
def test_against_hf_warm_start_tensors_and_missing(singles, decoder):
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        singles / "bert", singles / decoder, output_loading_info=True, decoder_start_token_id=2)
    assert model.config.decoder_start_token_id == 2
    assert info["encoder"].missing == []
    assert set(info["decoder"].missing) == reference_missing(singles / decoder)
    state = canonical_state(model)
    src = load_file(singles / "bert" / "model.safetensors")
    for k, v in src.items():
        if k != "embeddings.position_ids":
            np.testing.assert_array_equal(state["encoder." + k], v)
    # a Linear weight lands transposed in the NNX kernel
    np.testing.assert_array_equal(model.encoder.encoder.layer[1].attention.self.query.kernel[...],
                                  src["encoder.layer.1.attention.self.query.weight"].T)
    src = load_file(singles / decoder / "model.safetensors")
    prefix = "bert." if decoder == "bert" else ""
    for k, v in src.items():
        if not k.startswith("pooler."):
            np.testing.assert_array_equal(state["decoder." + prefix + k], v)
    cross = [n for n in state if "crossattention" in n and n.endswith("weight")
             and "LayerNorm" not in n]
    assert cross and all(0.005 < state[n].std() < 0.05 for n in cross)  # normal(0, 0.02)


def test_against_hf_minilm_warm_start(minilm_dir):
    """The real all-MiniLM-L6-v2 checkpoint as encoder and decoder; encoder outputs on real
    text equal transformers' BertModel."""
    import torch
    import transformers as tr
    from tokenizers import Tokenizer

    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        minilm_dir, minilm_dir, output_loading_info=True)
    assert set(info["decoder"].missing) == reference_missing(minilm_dir)
    assert model.enc_to_dec_proj is None
    src = load_file(minilm_dir / "model.safetensors")
    state = canonical_state(model)
    for k, v in src.items():
        if k != "embeddings.position_ids":
            np.testing.assert_array_equal(state["encoder." + k], v)
            if not k.startswith("pooler."):
                np.testing.assert_array_equal(state["decoder.bert." + k], v)

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(["The quick brown fox jumps over the lazy dog.", "Hello world!"])
    ids = np.array([e.ids for e in enc])
    mask = np.array([e.attention_mask for e in enc])
    ref = tr.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        r = ref(**to_torch(dict(input_ids=ids, attention_mask=mask)))
        r64 = ref.double()(**to_torch(dict(input_ids=ids, attention_mask=mask)))
    o = model.encoder(input_ids=ids, attention_mask=mask)
    real = mask.astype(bool)
    assert max_diff(r.last_hidden_state[torch.from_numpy(real)],
                    np.asarray(o.last_hidden_state)[real]) < TOL
    assert max_diff(r.pooler_output, o.pooler_output) < TOL
    # Padded query rows (outputs nobody reads): there the fp32 reference itself is ~4e-5 off
    # its own float64 result, so ours is compared with the float64 result, at tol.PADDED_ROWS.
    assert max_diff(r64.last_hidden_state, o.last_hidden_state) < tol.PADDED_ROWS


def _rewrite(src_dir, dst_dir, rename):
    """Copy a checkpoint, renaming (or dropping, when rename returns None) its keys."""
    shutil.copytree(src_dir, dst_dir)
    out = {}
    for k, v in load_file(src_dir / "model.safetensors").items():
        new = rename(k)
        if new is not None:
            out[new] = v
    return out


def test_bert_base_checkpoint_quirks(singles, tmp_path):
    """`bert.` prefix, legacy gamma/beta and a `position_ids` buffer load like the original;
    the same base checkpoint in a decoder reports the heads and cross-attention as new."""
    def rename(k):
        k = "bert." + k
        return k.replace(".weight", ".gamma").replace(".bias", ".beta") if "LayerNorm" in k else k

    state = _rewrite(singles / "bert", tmp_path / "ckpt", rename)
    state["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    reference = canonical_state(BertModel.from_pretrained(singles / "bert"))
    model, report = BertModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == []
    for k, v in canonical_state(model).items():
        np.testing.assert_array_equal(v, reference[k])
    dec, report = BertLMHeadModel.from_pretrained(tmp_path / "ckpt", is_decoder=True,
                                                  add_cross_attention=True,
                                                  output_loading_info=True)
    assert set(report.missing) == reference_missing(singles / "bert")
    assert dec.cls.predictions.decoder.kernel is None  # tied: the logits use the word embeddings


def test_gpt2_checkpoint_quirks(singles, tmp_path):
    """Old GPT-2 checkpoints: `attn.bias`/`attn.masked_bias` buffers, base model without
    `transformer.` prefix, and a base checkpoint in a head model (lm_head tied, not missing)."""
    state = _rewrite(singles / "gpt2", tmp_path / "ckpt",
                     lambda k: k.removeprefix("transformer.") if k != "lm_head.weight" else None)
    for i in range(GPT2_TINY["n_layer"]):
        state[f"h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        state[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    base, report = GPT2Model.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == [] and len(report.ignored) == 2 * GPT2_TINY["n_layer"]
    lm, report = GPT2LMHeadModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == [] and lm.lm_head is None
    full = GPT2LMHeadModel.from_pretrained(singles / "gpt2")
    ids = np.random.default_rng(0).integers(0, 99, (2, 9))
    assert max_diff(full(ids).logits, lm(ids).logits) == 0.0
    assert max_diff(full.transformer(ids).last_hidden_state, base(ids).last_hidden_state) == 0


def test_head_checkpoint_in_base_model_drops_and_reports_head(singles, tmp_path):
    dec = BertLMHeadModel.from_pretrained(singles / "bert", is_decoder=True)
    dec.save_pretrained(tmp_path / "lm")
    base, report = BertModel.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert sorted(report.dropped) == sorted(
        k for k in load_file(tmp_path / "lm" / "model.safetensors") if k.startswith("cls."))
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]


def test_against_hf_backbones_and_save_round_trip(singles, tmp_path):
    """Backbones alone (no cross-attention) against transformers' same classes; a Flax-saved
    GPT2LMHeadModel loads in transformers with the same logits."""
    import torch
    import transformers as tr

    ids = np.random.default_rng(1).integers(4, 99, (2, 9))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    t = to_torch(dict(input_ids=ids, attention_mask=mask))
    with torch.no_grad():
        r = tr.BertModel.from_pretrained(singles / "bert").eval()(**t)
        o = BertModel.from_pretrained(singles / "bert")(input_ids=ids, attention_mask=mask)
        assert max_diff(r.last_hidden_state, o.last_hidden_state) < TOL
        assert max_diff(r.pooler_output, o.pooler_output) < TOL
        r = tr.GPT2LMHeadModel.from_pretrained(singles / "gpt2").eval()(**t, labels=t["input_ids"])
        model = GPT2LMHeadModel.from_pretrained(singles / "gpt2")
        o = model(input_ids=ids, attention_mask=mask, labels=ids)
        assert max_diff(r.logits, o.logits) < TOL
        assert abs(r.loss.item() - float(o.loss)) < TOL
        model.save_pretrained(tmp_path / "g")
        again = tr.GPT2LMHeadModel.from_pretrained(tmp_path / "g").eval()
        assert max_diff(again(t["input_ids"]).logits, model(input_ids=ids).logits) < TOL
