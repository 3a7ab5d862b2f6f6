"""encdec.flax vs transformers' EncoderDecoderModel (PyTorch) under `nnx.jit`, and NNX's model
API and modes (the eager parity of every backend: tests/harness/test_architectures.py)."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from encdec.flax import EncoderDecoderModel
from tests.conftest import make_batch, max_diff, to_torch

TOL = 1e-5
FIELDS = ("logits", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
          "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions")


def _reference(ref, kw):
    import torch

    with torch.no_grad():
        return ref(**to_torch({k: v for k, v in kw.items() if isinstance(v, np.ndarray)}),
                   **{k: v for k, v in kw.items() if not isinstance(v, np.ndarray)})


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_against_hf_under_nnx_jit(name, reference_dir, hf_model):
    """The whole forward (labels shifted inside the trace) compiled with nnx.jit; outputs are
    registered pytrees and come back as Seq2SeqLMOutput."""
    d = reference_dir(name)
    ref, ours = hf_model(d, attn="eager"), EncoderDecoderModel.from_pretrained(d)
    b = make_batch(seed=2)

    @nnx.jit
    def forward(model, input_ids, attention_mask, labels):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                     output_hidden_states=True, output_attentions=True)

    o = forward(ours, b["input_ids"], b["attention_mask"], b["labels"])
    r = _reference(ref, dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                             labels=b["labels"], output_hidden_states=True,
                             output_attentions=True))
    assert type(o).__name__ == "Seq2SeqLMOutput"
    assert abs(r.loss.item() - float(o.loss)) < TOL
    for field in FIELDS:
        assert max_diff(r[field], o[field]) < TOL, field


# slow: flax's loads put the model in inference mode in every fast test; train()'s dropout:
# tests/harness/test_causal_lm.py's training-mode test (BART decoder)
@pytest.mark.slow
def test_model_api_and_modes(reference_dir):
    """Inference mode after loading, train()/eval() toggle dropout, encoder_outputs as a tuple,
    generation_config and NNX state paths mirroring the reference's names."""
    d = reference_dir("bert2gpt2_proj")
    m = EncoderDecoderModel.from_pretrained(d)
    assert m.generation_config.decoder_start_token_id == m.config.decoder_start_token_id
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param))}
    assert "encoder.encoder.layer.0.attention.self.query.kernel" in paths
    assert "decoder.transformer.h.1.crossattention.q_attn.kernel" in paths
    assert "enc_to_dec_proj.kernel" in paths
    b = make_batch()
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"])
    a, a2 = m(**kw).logits, m(**kw).logits
    assert max_diff(a, a2) == 0.0
    enc = m.encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    via_tuple = m(attention_mask=b["attention_mask"], decoder_input_ids=b["decoder_input_ids"],
                  encoder_outputs=(enc.last_hidden_state,)).logits
    assert max_diff(a, via_tuple) == 0.0
    m.train()
    t1, t2 = m(**kw).logits, m(**kw).logits
    assert max_diff(t1, t2) > 0.0  # dropout on, fresh masks per call
    m.eval()
    assert max_diff(a, m(**kw).logits) == 0.0
