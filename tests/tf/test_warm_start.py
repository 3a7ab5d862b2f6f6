"""Warm starting from single-model checkpoints (transformers-saved and the real MiniLM), and
the checkpoint quirks the readers accept: with/without `bert.` prefix, legacy gamma/beta,
GPT-2 `attn.bias` buffers, BERT `position_ids`, heads missing from a base checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encdec.core import weights
from encdec.tf import BertLMHeadModel, BertModel, EncoderDecoderModel, GPT2LMHeadModel, GPT2Model
from tests import tolerances as tol
from tests.conftest import TINY

from .conftest import max_diff

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


def state_dict(model) -> dict[str, np.ndarray]:
    """A Keras model's weights under canonical (the reference's state-dict) names."""
    return dict(weights.export_state(model.table(), lambda path: _get(model, path),
                                     weights.Dialect.KERAS))


def _get(model, path):
    from encdec.tf import params

    return params.get(model, path)


def reference_missing(directory) -> set[str]:
    """transformers' newly initialised weights of the decoder built from `directory` (a tied
    weight whose source is missing is listed under both names, as the core reports it)."""
    import transformers as tr

    config = tr.AutoConfig.from_pretrained(directory, is_decoder=True, add_cross_attention=True)
    _, info = tr.AutoModelForCausalLM.from_pretrained(directory, config=config,
                                                      output_loading_info=True)
    return set(info["missing_keys"])


@pytest.mark.parametrize("decoder", ["bert", "gpt2"])
def test_against_hf_warm_start_tensors_and_missing(singles, decoder):
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        singles / "bert", singles / decoder, output_loading_info=True, decoder_start_token_id=2)
    assert model.config.decoder_start_token_id == 2
    assert info["encoder"].missing == []
    assert set(info["decoder"].missing) == reference_missing(singles / decoder)
    state = state_dict(model)
    src = load_file(singles / "bert" / "model.safetensors")
    for k, v in src.items():
        if k != "embeddings.position_ids":
            np.testing.assert_array_equal(state["encoder." + k], v)
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
    state = state_dict(model)
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
        r = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    o = model.encoder(input_ids=ids, attention_mask=mask)
    real = mask == 1  # (B, S)
    assert max_diff(r.last_hidden_state.numpy()[real], o.last_hidden_state.numpy()[real]) < TOL
    assert max_diff(r.pooler_output, o.pooler_output) < TOL
    # Padding query positions (outputs nobody reads): the looser bound's reason is in
    # tests/tolerances.py (PADDED_ROWS).
    assert max_diff(r.last_hidden_state, o.last_hidden_state) < tol.PADDED_ROWS


def _rewrite(src_dir, dst_dir, rename):
    """Copy a checkpoint, renaming (or dropping, when rename returns None) its keys."""
    shutil.copytree(src_dir, dst_dir)
    state = load_file(src_dir / "model.safetensors")
    out = {}
    for k, v in state.items():
        new = rename(k)
        if new is not None:
            out[new] = v
    return out


@pytest.mark.parametrize("variant", ["prefixed", "legacy_gamma_beta", "position_ids"])
def test_bert_base_checkpoint_quirks(singles, tmp_path, variant):
    def rename(k):
        if variant == "prefixed":
            return "bert." + k
        if variant == "legacy_gamma_beta" and "LayerNorm" in k:
            return k.replace(".weight", ".gamma").replace(".bias", ".beta")
        return k

    state = _rewrite(singles / "bert", tmp_path / "ckpt", rename)
    if variant == "position_ids":
        state["embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    reference = state_dict(BertModel.from_pretrained(singles / "bert"))
    model, report = BertModel.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert report.missing == []
    got = state_dict(model)
    for n, a in reference.items():
        np.testing.assert_array_equal(a, got[n], err_msg=n)
    # the same base checkpoint in a decoder: heads and cross-attention newly initialised
    dec, report = BertLMHeadModel.from_pretrained(tmp_path / "ckpt", is_decoder=True,
                                                  add_cross_attention=True,
                                                  output_loading_info=True)
    assert set(report.missing) == reference_missing(singles / "bert")
    assert dec.cls.predictions.decoder.kernel is None  # tied: the word embeddings
    np.testing.assert_array_equal(dec.bert.embeddings.word_embeddings.embeddings.numpy(),
                                  reference["embeddings.word_embeddings.weight"])


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
    assert report.missing == []
    assert lm.lm_head is None  # tied: wte
    full = GPT2LMHeadModel.from_pretrained(singles / "gpt2")
    ids = np.random.default_rng(0).integers(0, 99, (2, 7))
    assert max_diff(full(ids).logits, lm(ids).logits) == 0.0
    assert max_diff(full.transformer(ids).last_hidden_state, base(ids).last_hidden_state) == 0
    # transformers stores the tied lm_head once (as wte): nothing for a base model to drop
    _, report = GPT2Model.from_pretrained(singles / "gpt2", output_loading_info=True)
    assert report.dropped == [] and report.missing == []


def test_head_checkpoint_in_base_model_drops_and_reports_head(singles, tmp_path):
    dec = BertLMHeadModel.from_pretrained(singles / "bert", is_decoder=True)
    dec.save_pretrained(tmp_path / "lm")
    base, report = BertModel.from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert sorted(report.dropped) == sorted(
        k for k in load_file(tmp_path / "lm" / "model.safetensors") if k.startswith("cls."))
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]


def test_against_hf_backbone_forward(singles):
    """Backbones alone (no cross-attention) against transformers' same classes."""
    import torch
    import transformers as tr

    ids = np.random.default_rng(1).integers(4, 99, (2, 9))
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        r = tr.BertModel.from_pretrained(singles / "bert").eval()(t_ids, attention_mask=t_mask)
    o = BertModel.from_pretrained(singles / "bert")(ids, attention_mask=mask)
    assert max_diff(r.last_hidden_state, o.last_hidden_state) < TOL
    with torch.no_grad():
        r = tr.GPT2LMHeadModel.from_pretrained(singles / "gpt2").eval()(
            t_ids, attention_mask=t_mask, labels=t_ids)
    o = GPT2LMHeadModel.from_pretrained(singles / "gpt2")(ids, attention_mask=mask, labels=ids)
    assert max_diff(r.logits, o.logits) < TOL
    assert abs(r.loss.item() - float(o.loss)) < TOL


def test_backbone_save_round_trip(singles, tmp_path):
    import torch
    import transformers as tr

    model = GPT2LMHeadModel.from_pretrained(singles / "gpt2")
    model.save_pretrained(tmp_path / "g")
    again = tr.GPT2LMHeadModel.from_pretrained(tmp_path / "g").eval()
    ids = np.random.default_rng(2).integers(0, 99, (2, 5))
    with torch.no_grad():
        r = again(torch.from_numpy(ids)).logits
    assert max_diff(r, model(ids).logits) < TOL


def test_against_hf_untied_gpt2_lm_head(tmp_path):
    """tie_word_embeddings=False: `lm_head` is its own Dense (kernel = weight.T), saved and
    loaded under the reference's name."""
    import torch
    import transformers as tr

    torch.manual_seed(1)
    ref = tr.GPT2LMHeadModel(tr.GPT2Config(**GPT2_TINY, tie_word_embeddings=False)).eval()
    ref.save_pretrained(tmp_path / "ref")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "ref")
    assert model.lm_head.kernel.shape == (32, 99)
    ids = np.random.default_rng(3).integers(0, 99, (2, 6))
    with torch.no_grad():
        r = ref(torch.from_numpy(ids)).logits
    assert max_diff(r, model(ids).logits) < TOL
    model.save_pretrained(tmp_path / "ours")
    src, saved = (load_file(tmp_path / d / "model.safetensors") for d in ("ref", "ours"))
    assert set(saved) == set(src)
    np.testing.assert_array_equal(saved["lm_head.weight"], src["lm_head.weight"])
