"""Warm start (`from_encoder_decoder_pretrained`) from single-model checkpoints written by
transformers, in every backend.

BERT-like, GPT-2 and DistilBERT sides (issue 8): `output_loading_info=True` reports as newly
initialised exactly what transformers initialises (its `AutoModel` / `AutoModelForCausalLM`
loading info), every other tensor is loaded bit for bit, the new cross-attention is drawn as the
reference draws it, and the encoder encodes as the reference's (also the real all-MiniLM-L6-v2
checkpoint, on real text). A DistilBERT decoder and a BART-family encoder are clear errors.

BART-family decoders (issue 9), from the checkpoints people have (`*ForConditionalGeneration`,
`MarianMTModel`, `BartModel`, `BartForCausalLM` saves). A seq2seq save stores the shared
embedding once, as `model.shared.weight`: the reference's causal-LM path
(`AutoModelForCausalLM`) then initialises `embed_tokens` and the tied `lm_head` randomly.
encdec takes them from the shared tensor and reports it (`LoadReport.aliased`); otherwise its
reports are the reference's: the encoder weights it leaves behind are dropped and listed, and
what is newly initialised is what transformers initialises (Marian's save has no sinusoidal
`embed_positions`: it is computed, as the reference computes it). Every decoder tensor, the
pretrained cross-attention included, equals the checkpoint's, and the composite's forward
equals the reference's once the shared embedding is copied into the reference's decoder.
(Backbones loaded alone: tests/harness/test_backbones.py.)
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core.registry import architecture
from tests import tolerances as tol
from tests.conftest import make_batch, tiny_kwargs
from tests.harness.backends import ADAPTERS, _numpy

SLOW = pytest.mark.slow

# (encoder checkpoint class, decoder checkpoint class): base models, masked-LM, pre-training and
# causal-LM saves on either side, so that heads are dropped or newly initialised. The fast
# subset runs the first three (BERT, GPT-2, RoBERTa's MLM head dropped) in every backend.
FAST = 3
CASES = [
    ("BertModel", "BertModel"),
    ("BertModel", "GPT2LMHeadModel"),
    ("RobertaForMaskedLM", "RobertaForMaskedLM"),
    ("RobertaForCausalLM", "RobertaForCausalLM"),
    ("XLMRobertaForMaskedLM", "XLMRobertaForCausalLM"),
    ("CamembertModel", "CamembertForMaskedLM"),
    ("ElectraForPreTraining", "ElectraForPreTraining"),
    ("ElectraForMaskedLM", "ElectraForMaskedLM"),
    ("BertGenerationEncoder", "BertGenerationEncoder"),
    ("BertGenerationEncoder", "BertGenerationDecoder"),
    ("DistilBertModel", "BertForMaskedLM"),
    ("DistilBertForMaskedLM", "GPT2Model"),
]
CLASSES = sorted({c for case in CASES for c in case} | {"DistilBertModel", "GPT2Model"})


class Singles(dict):
    """class name -> a directory saved by transformers' `<class>.save_pretrained` (tiny, its
    norms and biases perturbed), made on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        import torch
        import transformers as tr

        cls = getattr(tr, name)
        model_type = cls.config_class.model_type
        causal = "CausalLM" in name or name == "BertGenerationDecoder"
        config = tr.AutoConfig.for_model(model_type, **tiny_kwargs(model_type),
                                         is_decoder=causal)
        torch.manual_seed(CLASSES.index(name))
        model = cls(config).eval()
        with torch.no_grad():  # non-trivial norms and biases
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n.lower() or ".ln_" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(self.root / name)
        self[name] = self.root / name
        return self[name]


@pytest.fixture(scope="session")
def single(tmp_path_factory) -> Singles:
    return Singles(tmp_path_factory.mktemp("singles"))


def reference(directory, side: str):
    """transformers' backbone for `side` as its `from_encoder_decoder_pretrained` builds it,
    with its loading info (missing keys: the newly initialised weights)."""
    import transformers as tr

    flags = dict(is_decoder=side == "decoder", add_cross_attention=side == "decoder")
    config = tr.AutoConfig.from_pretrained(directory, **flags)
    auto = tr.AutoModelForCausalLM if side == "decoder" else tr.AutoModel
    model, info = auto.from_pretrained(directory, config=config, output_loading_info=True)
    return model.eval(), set(info["missing_keys"])


@pytest.mark.parametrize("backend", list(ADAPTERS))
@pytest.mark.parametrize("enc, dec", [
    pytest.param(e, d, id=f"{e}-{d}", marks=() if i < FAST else SLOW)
    for i, (e, d) in enumerate(CASES)])
def test_against_hf_warm_start(single, adapters, enc, dec, backend, tmp_path):
    """Missing keys as transformers', every loaded tensor bit for bit, the encoder's output.
    (Start id, eval mode and the new weights' init: test_loading.py's
    test_warm_start_finished.)"""
    ad = adapters[backend]
    model, info = ad.warm_start(single[enc], single[dec], decoder_start_token_id=2)
    ad.save(model, tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    for side, name in (("encoder", enc), ("decoder", dec)):
        ref, missing = reference(single[name], side)
        assert set(info[side].missing) == missing, f"{side} {name}"
        loaded = {k: v for k, v in ref.state_dict().items() if k not in missing}
        compared = [k for k in loaded if f"{side}.{k}" in saved]
        assert len(compared) > len(loaded) // 2, f"{side}: {sorted(loaded)} vs {sorted(saved)}"
        for k in compared:
            np.testing.assert_array_equal(saved[f"{side}.{k}"], loaded[k].numpy(),
                                          err_msg=f"{side}.{k}")
        if side == "encoder":
            import torch

            pad = architecture(ref.config.model_type).config_class().pad_token_id
            b = make_batch(seed=3, pad=pad if pad is not None else 0)
            with torch.no_grad():
                want = ref(input_ids=torch.from_numpy(b["input_ids"]),
                           attention_mask=torch.from_numpy(b["attention_mask"]))
            got = ad.forward(model, {k: b[k] for k in ("input_ids", "attention_mask",
                                                       "decoder_input_ids")})
            tol.assert_close(got["encoder_last_hidden_state"], want.last_hidden_state.numpy(),
                             tol.FORWARD, f"{backend} {enc} encoder")


def test_against_hf_minilm_warm_start(backend, minilm_dir):
    """The real all-MiniLM-L6-v2 checkpoint as encoder and decoder (slow: `minilm_dir`): the
    reference's missing keys, every tensor on both sides, and on real text the encoder's outputs
    equal transformers' BertModel's."""
    import torch
    import transformers as tr
    from tokenizers import Tokenizer

    model, info = backend.warm_start(minilm_dir, minilm_dir)
    assert set(info["encoder"].missing) == set()
    assert set(info["decoder"].missing) == reference(minilm_dir, "decoder")[1]
    assert model.enc_to_dec_proj is None
    state = backend.state(model)
    for k, v in load_file(minilm_dir / "model.safetensors").items():
        if k != "embeddings.position_ids":
            np.testing.assert_array_equal(state["encoder." + k], v, err_msg=k)
            if not k.startswith("pooler."):
                np.testing.assert_array_equal(state["decoder.bert." + k], v, err_msg=k)

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(["The quick brown fox jumps over the lazy dog.", "Hello world!"])
    b = dict(input_ids=np.array([e.ids for e in enc]),
             attention_mask=np.array([e.attention_mask for e in enc]))
    ref = tr.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in b.items()})
        want64 = ref.double()(**{k: torch.from_numpy(v) for k, v in b.items()})
    got = model.encoder(**backend.inputs(b))
    hidden = _numpy(got.last_hidden_state)
    real = b["attention_mask"] == 1  # (B, S)
    tol.assert_close(hidden[real], want.last_hidden_state.numpy()[real], tol.FORWARD, "real rows")
    tol.assert_close(_numpy(got.pooler_output), want.pooler_output.numpy(), tol.FORWARD, "pooler")
    # padded query rows (outputs nobody reads): tf at PADDED_ROWS, flax at PADDED_ROWS against
    # the float64 result (the fp32 reference is itself ~4e-5 off there: tests/tolerances.py)
    bound, ref_rows = {"pt": (tol.FORWARD, want), "tf": (tol.PADDED_ROWS, want),
                       "flax": (tol.PADDED_ROWS, want64)}[backend.name]
    tol.assert_close(hidden, ref_rows.last_hidden_state.numpy(), bound, "all rows")


# --- BART-family decoders (issue 9) ----------------------------------------

EMBED = "model.decoder.embed_tokens.weight"
SHARED = "model.shared.weight"
# case -> (model_type, transformers class, d_model, the key of the shared embedding in its save
# (None: the save stores embed_tokens)): every family member's seq2seq save, a base-model save,
# a causal-LM save, and a decoder wider than the encoder (`enc_to_dec_proj`)
BART_CASES = {
    "bart": ("bart", "BartForConditionalGeneration", 32, SHARED),
    "mbart": ("mbart", "MBartForConditionalGeneration", 32, SHARED),
    "marian": ("marian", "MarianMTModel", 32, SHARED),
    "pegasus": ("pegasus", "PegasusForConditionalGeneration", 32, SHARED),
    "bart-model": ("bart", "BartModel", 32, "shared.weight"),
    "bart-causal-lm": ("bart", "BartForCausalLM", 32, None),
    "bart-48": ("bart", "BartForConditionalGeneration", 48, SHARED),
}


def tiny_config(model_type: str, d_model: int):
    """A tiny transformers config; ids inside the vocabulary (Marian's defaults are 58100)."""
    import transformers as tr

    kw = tiny_kwargs(model_type, d_model)
    default = tr.AutoConfig.for_model(model_type)
    ids = {k: 2 if k == "decoder_start_token_id" else 0
           for k in ("pad_token_id", "decoder_start_token_id")
           if (getattr(default, k, None) or 0) >= kw["vocab_size"]}
    return tr.AutoConfig.for_model(model_type, **{**kw, **ids})


class Saves(dict):
    """case -> directory of `<class>.save_pretrained` (random weights, norms and biases
    perturbed); "bert" -> a BertModel save (the encoder). Made on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, case: str):
        import torch
        import transformers as tr

        if case == "bert":
            torch.manual_seed(99)
            model = tr.BertModel(tr.BertConfig(**tiny_kwargs("bert")))
        else:
            model_type, cls, d_model, _ = BART_CASES[case]
            torch.manual_seed(list(BART_CASES).index(case))
            model = getattr(tr, cls)(tiny_config(model_type, d_model))
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("bias") or "norm" in n.lower():
                        p.add_(0.1 * torch.randn_like(p))
        model.eval().save_pretrained(self.root / case)
        self[case] = self.root / case
        return self[case]


@pytest.fixture(scope="session")
def saves(tmp_path_factory) -> Saves:
    return Saves(tmp_path_factory.mktemp("bart-saves"))


@pytest.fixture(scope="session")
def reference_lm(saves):
    """case -> (transformers' causal LM as `from_encoder_decoder_pretrained` loads the decoder,
    its missing keys (newly initialised), its unexpected keys (left behind))."""
    import transformers as tr

    cache = {}

    def get(case: str):
        if case not in cache:
            config = tr.AutoConfig.from_pretrained(saves[case], is_decoder=True,
                                                   add_cross_attention=True)
            lm, info = tr.AutoModelForCausalLM.from_pretrained(
                saves[case], config=config, output_loading_info=True)
            cache[case] = lm.eval(), set(info["missing_keys"]), set(info["unexpected_keys"])
        return cache[case]

    return get


def source_key(name: str, source: dict, case: str) -> str | None:
    """The checkpoint key a decoder parameter (canonical `model.decoder.…` name) comes from."""
    if name == EMBED and BART_CASES[case][3]:
        return BART_CASES[case][3]
    return next((k for k in (name, name.removeprefix("model.")) if k in source), None)


@pytest.mark.parametrize("case", list(BART_CASES))
def test_seq2seq_save_stores_the_embedding_once(saves, case):
    """What the issue starts from: a seq2seq save holds `model.shared.weight` and no
    `embed_tokens`; Marian's holds no sinusoidal table either."""
    keys = load_file(saves[case] / "model.safetensors").keys()
    shared = BART_CASES[case][3]
    if shared is None:
        assert EMBED in keys
        return
    assert shared in keys
    assert not [k for k in keys if "embed_tokens" in k or k.startswith("lm_head")], sorted(keys)
    if case == "marian":
        assert not [k for k in keys if "embed_positions" in k], sorted(keys)


@pytest.mark.filterwarnings("ignore")
# bart in pt and tf stay fast; the other saves, and flax (its same core path): CI
@pytest.mark.parametrize("case, backend", [
    pytest.param(c, b, marks=() if c == "bart" and b != "flax" else SLOW)
    for c in BART_CASES for b in ADAPTERS])
def test_against_hf_bart_warm_start(saves, reference_lm, adapters, case, backend, tmp_path,
                                    caplog):
    import torch
    import transformers as tr

    ad = adapters[backend]
    with caplog.at_level(logging.WARNING, logger="encdec"):
        model, info = ad.warm_start(saves["bert"], saves[case], decoder_start_token_id=2)
    report, shared = info["decoder"], BART_CASES[case][3]
    ref_lm, ref_missing, ref_unexpected = reference_lm(case)

    # the reports: the reference's, less what the shared embedding supplies (and their ties)
    assert report.aliased == ([(EMBED, shared)] if shared else [])
    supplied = {EMBED, "lm_head.weight"} if shared else set()
    assert supplied <= ref_missing or not shared
    assert set(report.missing) == ref_missing - supplied, (report.missing, ref_missing)
    assert set(report.dropped) | ({shared} if shared else set()) == ref_unexpected
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    if shared:
        assert f"{EMBED} <- {shared}" in log_text, log_text
    for key in report.dropped[:3]:  # the encoder weights left behind are listed
        assert key in log_text, (key, log_text)
    if not report.dropped and not report.missing and not shared:
        assert "decoder" not in log_text

    # every decoder tensor: the checkpoint's (cross-attention included), or, where the
    # checkpoint has none, the reference's computed table; the tied lm_head is not stored
    ad.save(model, tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    source = load_file(saves[case] / "model.safetensors")
    ref_state = ref_lm.state_dict()
    decoder_keys = [k for k in saved if k.startswith("decoder.")]
    assert "decoder.lm_head.weight" not in saved
    assert any(".encoder_attn." in k for k in decoder_keys)
    for key in decoder_keys:
        name = key.removeprefix("decoder.")
        src = source_key(name, source, case)
        if src is None:  # newly made: only fixed tables (Marian's sinusoidal positions)
            assert name in report.missing and "embed_positions" in name, name
            np.testing.assert_array_equal(saved[key], ref_state[name].numpy(), err_msg=name)
        else:
            np.testing.assert_array_equal(saved[key], source[src], err_msg=f"{name} <- {src}")
    assert not [n for n in report.missing if "encoder_attn" in n]

    # the forward equals the reference's composite once its decoder gets the shared embedding
    ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(saves["bert"], saves[case])
    ref.eval()
    with torch.no_grad():
        if shared:
            embed = ref.decoder.model.decoder.embed_tokens.weight
            assert ref.decoder.lm_head.weight.data_ptr() == embed.data_ptr()
            assert not np.array_equal(embed.numpy(), source[shared])  # the reference's random init
            embed.copy_(torch.from_numpy(source[shared]))
        if hasattr(ref, "enc_to_dec_proj"):  # random in both: take ours
            for k in ("weight", "bias"):
                getattr(ref.enc_to_dec_proj, k).copy_(
                    torch.from_numpy(saved[f"enc_to_dec_proj.{k}"]))
    b = make_batch(seed=4)
    b["decoder_attention_mask"] = np.ones_like(b["decoder_input_ids"])
    b["decoder_attention_mask"][1, -2:] = 0
    del b["labels"]
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy()
    got = ad.forward(model, b)["logits"]
    tol.assert_close(got, want, tol.FORWARD, f"{case} {backend} logits")


@pytest.mark.parametrize("backend", list(ADAPTERS))
@pytest.mark.parametrize("saves_of, enc, dec, match", [
    ("single", "BertModel", "DistilBertModel", r"distilbert cannot be a decoder"),
    ("saves", "bart", "bart", r"bart cannot be the encoder: .*decoder only")])
def test_unsupported_side_is_a_clear_error(request, adapters, backend, saves_of, enc, dec, match):
    """A DistilBERT decoder, a BART-family encoder: an error naming it, in every backend."""
    dirs = request.getfixturevalue(saves_of)
    with pytest.raises(ValueError, match=match):
        adapters[backend].warm_start(dirs[enc], dirs[dec])
