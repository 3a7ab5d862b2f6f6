"""Warm start of a BART-family decoder from the checkpoints people have (issue 9), in every
backend: `from_encoder_decoder_pretrained(bert_dir, dec_dir)` where `dec_dir` is a
`*ForConditionalGeneration` / `MarianMTModel` / `BartModel` / `BartForCausalLM` save written by
transformers.

A seq2seq save stores the shared embedding once, as `model.shared.weight`: the reference's
causal-LM path (`AutoModelForCausalLM`) then initialises `embed_tokens` and the tied `lm_head`
randomly. encdec takes them from the shared tensor and reports it (`LoadReport.aliased`);
otherwise its reports are the reference's: the encoder weights it leaves behind are dropped
and listed, and what is newly initialised is what transformers initialises (Marian's save has no
sinusoidal `embed_positions`: it is computed, as the reference computes it). Every decoder
tensor, the pretrained cross-attention included, equals the checkpoint's, and the composite's
forward equals the reference's once the shared embedding is copied into the reference's decoder.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests import tolerances as tol
from tests.conftest import make_batch, tiny_kwargs
from tests.harness.backends import ADAPTERS

EMBED = "model.decoder.embed_tokens.weight"
SHARED = "model.shared.weight"
# case -> (model_type, transformers class, d_model, the key of the shared embedding in its save
# (None: the save stores embed_tokens)): every family member's seq2seq save, a base-model save,
# a causal-LM save, and a decoder wider than the encoder (`enc_to_dec_proj`)
CASES = {
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


@pytest.fixture(scope="session")
def saves(tmp_path_factory):
    """case -> directory of `<class>.save_pretrained` (random weights, norms and biases
    perturbed); "bert" -> a BertModel save (the encoder)."""
    import torch
    import transformers as tr

    root = tmp_path_factory.mktemp("bart-saves")
    dirs = {}
    for i, (case, (model_type, cls, d_model, _)) in enumerate(CASES.items()):
        torch.manual_seed(i)
        model = getattr(tr, cls)(tiny_config(model_type, d_model)).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n.lower():
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(root / case)
        dirs[case] = root / case
    torch.manual_seed(99)
    tr.BertModel(tr.BertConfig(**tiny_kwargs("bert"))).eval().save_pretrained(root / "bert")
    dirs["bert"] = root / "bert"
    return dirs


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
    if name == EMBED and CASES[case][3]:
        return CASES[case][3]
    return next((k for k in (name, name.removeprefix("model.")) if k in source), None)


@pytest.mark.parametrize("case", list(CASES))
def test_seq2seq_save_stores_the_embedding_once(saves, case):
    """What the issue starts from: a seq2seq save holds `model.shared.weight` and no
    `embed_tokens`; Marian's holds no sinusoidal table either."""
    keys = load_file(saves[case] / "model.safetensors").keys()
    shared = CASES[case][3]
    if shared is None:
        assert EMBED in keys
        return
    assert shared in keys
    assert not [k for k in keys if "embed_tokens" in k or k.startswith("lm_head")], sorted(keys)
    if case == "marian":
        assert not [k for k in keys if "embed_positions" in k], sorted(keys)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.text = []

    def emit(self, record):
        self.text.append(record.getMessage())


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", list(ADAPTERS))
@pytest.mark.parametrize("case", list(CASES))
def test_against_hf_bart_warm_start(saves, reference_lm, adapters, case, backend, tmp_path):
    import torch
    import transformers as tr

    ad = adapters[backend]
    records, log = _Records(), logging.getLogger("encdec")
    log.addHandler(records)
    try:
        model, info = ad.warm_start(saves["bert"], saves[case], decoder_start_token_id=2)
    finally:
        log.removeHandler(records)
    report, shared = info["decoder"], CASES[case][3]
    ref_lm, ref_missing, ref_unexpected = reference_lm(case)

    # the reports: the reference's, less what the shared embedding supplies (and their ties)
    assert report.aliased == ([(EMBED, shared)] if shared else [])
    supplied = {EMBED, "lm_head.weight"} if shared else set()
    assert supplied <= ref_missing or not shared
    assert set(report.missing) == ref_missing - supplied, (report.missing, ref_missing)
    assert set(report.dropped) | ({shared} if shared else set()) == ref_unexpected
    log_text = "\n".join(records.text)
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
def test_bart_encoder_is_a_clear_error(saves, adapters, backend):
    """The BART family is decoder-only: as the encoder, an error naming it, in every backend."""
    with pytest.raises(ValueError, match=r"bart cannot be the encoder: .*decoder only"):
        adapters[backend].warm_start(saves["bart"], saves["bart"])
