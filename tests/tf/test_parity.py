"""encdec.tf vs transformers' (PyTorch) EncoderDecoderModel: logits, loss, hidden states,
attentions, checkpoints in both directions (DESIGN.md bound: 1e-5 in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from encdec.core import weights
from encdec.tf import EncoderDecoderModel, TFEncoderDecoderModel, params
from tests.conftest import COMPOSITES, make_batch

from .conftest import max_diff, to_torch

TOL = 1e-5
NAMES = sorted(COMPOSITES)


def _torch_no_grad():
    import torch

    return torch.no_grad()


@pytest.mark.parametrize("name", NAMES)
def test_against_hf_outputs_with_decoder_mask(name, reference_dir, hf_model):
    """decoder_attention_mask, output_hidden_states and output_attentions (eager reference)."""
    d = reference_dir(name, seed=1)
    ref, ours = hf_model(d, attn="eager"), EncoderDecoderModel.from_pretrained(d)
    b = make_batch(seed=1)
    dmask = np.ones_like(b["decoder_input_ids"])
    dmask[0, -2:] = 0
    dmask[2, 4:] = 0
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              decoder_input_ids=b["decoder_input_ids"], decoder_attention_mask=dmask,
              labels=b["labels"], output_hidden_states=True, output_attentions=True)
    with _torch_no_grad():
        r = ref(**to_torch({k: v for k, v in kw.items() if isinstance(v, np.ndarray)}),
                output_hidden_states=True, output_attentions=True)
    o = ours(**kw)
    assert abs(r.loss.item() - float(o.loss)) < TOL
    for field in ("logits", "decoder_hidden_states", "decoder_attentions", "cross_attentions",
                  "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions"):
        assert max_diff(r[field], o[field]) < TOL, field
    # return_dict=False: the reference's tuple order
    with _torch_no_grad():
        rt = ref(**to_torch({k: v for k, v in kw.items() if isinstance(v, np.ndarray)}),
                 output_hidden_states=True, output_attentions=True, return_dict=False)
    ot = ours(**kw, return_dict=False)
    assert len(rt) == len(ot)
    for x, y in zip(rt, ot, strict=True):
        if hasattr(x, "shape"):
            assert max_diff(x, y) < TOL
        elif isinstance(x, tuple) and x and hasattr(x[0], "shape"):
            assert max_diff(x, y) < TOL


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2"])
def test_against_hf_fully_masked_rows(name, reference_dir, hf_model):
    """Left padding at decoder position 0 and an all-padding source row: a query with no
    visible key gives what the reference's default (SDPA) attention gives."""
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)
    b = make_batch()
    mask = b["attention_mask"].copy()
    mask[1] = 0
    dmask = np.ones_like(b["decoder_input_ids"])
    dmask[0, :2] = 0
    kw = dict(input_ids=b["input_ids"], attention_mask=mask,
              decoder_input_ids=b["decoder_input_ids"], decoder_attention_mask=dmask)
    with _torch_no_grad():
        r = ref(**to_torch(kw))
    assert max_diff(r.logits, ours(**kw).logits) < TOL


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_against_hf_embeds_and_encoder_outputs(name, reference_dir, hf_model):
    d = reference_dir(name)
    ref, ours = hf_model(d), EncoderDecoderModel.from_pretrained(d)
    b = make_batch()
    t = to_torch(b)
    with _torch_no_grad():
        emb = ref.encoder.get_input_embeddings()(t["input_ids"])
        demb = ref.decoder.get_input_embeddings()(t["decoder_input_ids"])
        r = ref(inputs_embeds=emb, attention_mask=t["attention_mask"], decoder_inputs_embeds=demb)
        o = ours(inputs_embeds=emb.numpy(), attention_mask=b["attention_mask"],
                 decoder_inputs_embeds=demb.numpy())
        assert max_diff(r.logits, o.logits) < TOL
        enc = r.encoder_last_hidden_state
        r = ref(encoder_outputs=(enc,), attention_mask=t["attention_mask"],
                decoder_input_ids=t["decoder_input_ids"])
    o = ours(encoder_outputs=(tf.constant(enc.numpy()),), attention_mask=b["attention_mask"],
             decoder_input_ids=b["decoder_input_ids"])
    assert max_diff(r.logits, o.logits) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_variables_are_exactly_the_table(name, reference_dir):
    """Every Keras variable has a path in the table and every owned table entry a variable; a
    tied entry a model holds (a decoder bias that is the head's `bias`) is its source's."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    table = weights.encoder_decoder_table(model.config)
    found = params.variables(model)
    by_path = {weights.leaf(p, weights.Dialect.KERAS): p for p in table.params}
    paths = {weights.leaf(p, weights.Dialect.KERAS) for p in table.owned}
    assert paths <= set(found) <= set(by_path)
    for path in set(found) - paths:
        src = table.by_name[by_path[path].tied_to]
        assert found[path] is found[weights.leaf(src, weights.Dialect.KERAS)], path
    assert len({id(v) for v in model.weights}) == len(paths)
    # the reference's state-dict names as attributes
    layer = model.encoder.encoder.layer[0]
    assert layer.attention.self.query.kernel is params.variables(model)[
        "encoder.encoder.layer.0.attention.self.query.kernel"]


def test_random_init_constructors_and_mutable_config():
    from encdec.core import BertConfig, EncoderDecoderConfig, GPT2Config

    assert TFEncoderDecoderModel is EncoderDecoderModel
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=37),
        GPT2Config(vocab_size=99, n_embd=24, n_layer=2, n_head=4))
    model = EncoderDecoderModel(config=config)
    assert model.enc_to_dec_proj is not None
    w = model.decoder.transformer.h[0].crossattention.c_attn.kernel.numpy()
    assert abs(w.std() - 0.02) < 0.005
    assert model.decoder.lm_head is None  # tied: the LM head is wte
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
    b = make_batch()
    out = model(input_ids=b["input_ids"], labels=b["labels"])
    assert np.isfinite(float(out.loss))
    model.config.decoder.use_cache = False  # the backbones share the composite's config
    assert model(input_ids=b["input_ids"], labels=b["labels"]).past_key_values is None
    again = EncoderDecoderModel(encoder=model.encoder, decoder=model.decoder)
    assert again.encoder is model.encoder and again.enc_to_dec_proj is not None
    same = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4),
        BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)))
    assert same.enc_to_dec_proj is None
    assert same.decoder.cls.predictions.decoder.kernel is None  # tied to the word embeddings


def test_shift_tokens_right_matches_core(reference_dir):
    from encdec.core import seq2seq

    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    labels = make_batch()["labels"]
    np.testing.assert_array_equal(model.prepare_decoder_input_ids_from_labels(labels).numpy(),
                                  seq2seq.shift_tokens_right(labels, 0, 2))
    model.config.decoder_start_token_id = None
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model.prepare_decoder_input_ids_from_labels(labels)
