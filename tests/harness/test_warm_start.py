"""Warm start from single-model checkpoints written by transformers, in every backend
(issue 8): `from_encoder_decoder_pretrained(..., output_loading_info=True)` reports as newly
initialised exactly what transformers initialises (its `AutoModel` / `AutoModelForCausalLM`
loading info), loads every other tensor bit for bit, and encodes as the reference's encoder.
A DistilBERT decoder is a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core.registry import architecture
from tests import tolerances as tol
from tests.conftest import make_batch, tiny_kwargs
from tests.harness.backends import ADAPTERS

# (encoder checkpoint class, decoder checkpoint class): base models, masked-LM, pre-training and
# causal-LM saves on either side, so that heads are dropped or newly initialised.
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
CLASSES = sorted({c for case in CASES for c in case} | {"DistilBertModel"})


@pytest.fixture(scope="session")
def single(tmp_path_factory):
    """class name -> a directory saved by transformers' `<class>.save_pretrained` (tiny)."""
    import torch
    import transformers as tr

    root = tmp_path_factory.mktemp("singles")
    dirs = {}
    for i, name in enumerate(CLASSES):
        cls = getattr(tr, name)
        model_type = cls.config_class.model_type
        causal = "CausalLM" in name or name == "BertGenerationDecoder"
        config = tr.AutoConfig.for_model(model_type, **tiny_kwargs(model_type),
                                         is_decoder=causal)
        torch.manual_seed(i)
        model = cls(config).eval()
        with torch.no_grad():  # non-trivial norms and biases
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n.lower() or ".ln_" in n:
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


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
@pytest.mark.parametrize("enc, dec", CASES, ids=[f"{e}-{d}" for e, d in CASES])
def test_against_hf_warm_start(single, adapters, enc, dec, backend, tmp_path):
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


@pytest.mark.parametrize("backend", list(ADAPTERS))
def test_distilbert_decoder_is_a_clear_error(single, adapters, backend):
    with pytest.raises(ValueError, match=r"distilbert cannot be a decoder"):
        adapters[backend].warm_start(single["BertModel"], single["DistilBertModel"])
