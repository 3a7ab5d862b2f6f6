"""The PyTorch backend on the registry: class lookup by family, the reference's class names,
from_pretrained's model-type check, init from the registry's data, position limits."""

from __future__ import annotations

import pytest
import torch

import encdec.pt
from encdec.core import BertConfig, ConfigError, DistilBertConfig, RobertaConfig
from encdec.core.registry import (
    ARCHITECTURES,
    FAMILIES,
    architecture,
    max_positions,
    sinusoidal_table,
)
from encdec.pt import EncoderDecoderModel, RobertaForCausalLM, RobertaModel
from encdec.pt.encoder_decoder import FAMILIES as PT_FAMILIES
from encdec.pt.encoder_decoder import decoder_class
from tests.conftest import EXTRA, FAMILY_SIZES, pair_batch

from .conftest import max_diff, to_torch


def _tiny(arch, **kw):
    return arch.config_class(**{**FAMILY_SIZES[arch.family](32), **EXTRA.get(arch.name, {}), **kw})


def test_families_cover_the_registry():
    assert set(PT_FAMILIES) == set(FAMILIES)
    for arch in ARCHITECTURES:
        base, lm = PT_FAMILIES[arch.family]
        assert (lm is None) == (arch.lm_class is None), arch.name


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_reference_class_names_exported(arch, tmp_path):
    base, lm = PT_FAMILIES[arch.family]
    for name, family_class in ((arch.base_class, base), (arch.lm_class, lm)):
        if name is None:
            continue
        cls = getattr(encdec.pt, name)
        assert name in encdec.pt.__all__
        assert issubclass(cls, family_class) and cls.__name__ == name
        assert cls.config_class is arch.config_class
    name = arch.base_class or arch.lm_class  # decoder-only architectures: the causal LM
    model = getattr(encdec.pt, name)(_tiny(arch, pad_token_id=0))  # in the tiny vocabulary
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text().count(f'"{name}"') == 1
    again = getattr(encdec.pt, name).from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), n


def test_from_pretrained_refuses_another_model_type(tmp_path):
    RobertaModel(_tiny(architecture("roberta"))).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'roberta' is not a BertConfig.*RobertaModel"):
        encdec.pt.BertModel.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'roberta' is not a XLMRobertaConfig"):
        encdec.pt.XLMRobertaModel.from_pretrained(tmp_path)


def test_distilbert_decoder_is_a_clear_error():
    with pytest.raises(ConfigError, match="distilbert cannot be a decoder"):
        decoder_class(DistilBertConfig(**FAMILY_SIZES["distilbert"](32)))


def test_init_from_registry_data():
    config = RobertaConfig(**FAMILY_SIZES["bert"](32))
    model = RobertaForCausalLM(config)
    emb = model.roberta.embeddings
    pad = config.pad_token_id
    assert emb.word_embeddings.weight[pad].abs().sum() == 0
    assert emb.position_embeddings.weight[pad].abs().sum() == 0
    assert emb.word_embeddings.weight[pad + 1].abs().sum() > 0
    assert model.lm_head.decoder.weight is emb.word_embeddings.weight  # tied through the table
    assert model.lm_head.decoder.bias is model.lm_head.bias
    distil = encdec.pt.DistilBertModel(DistilBertConfig(**FAMILY_SIZES["distilbert"](32),
                                                        sinusoidal_pos_embds=True))
    table = torch.from_numpy(sinusoidal_table(64, 32))
    assert torch.equal(distil.embeddings.position_embeddings.weight, table)


@pytest.mark.parametrize("name", ["roberta2roberta", "bert2gpt2", "distilbert2bert"])
def test_position_limit_edges(name, reference_dir):
    """Exactly the table's tokens work (RoBERTa: max_position_embeddings - pad - 1); one more
    is a ValueError naming the argument and the limit, in forward, the decoding cache, the
    decode step and generate (all checked on the host before any gather)."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    enc_limit, dec_limit = max_positions(model.config.encoder), max_positions(model.config.decoder)
    x, y = torch.randint(4, 99, (1, enc_limit)), torch.randint(4, 99, (1, dec_limit))
    with torch.no_grad():
        assert model(input_ids=x, decoder_input_ids=y).logits.shape[1] == dec_limit
    too_long = r"has {n} tokens; the \S+ position table serves {limit}"
    with pytest.raises(ValueError, match="input_ids " + too_long.format(n=enc_limit + 1,
                                                                        limit=enc_limit)):
        model(input_ids=torch.randint(4, 99, (1, enc_limit + 1)), decoder_input_ids=y)
    with pytest.raises(ValueError, match="decoder_input_ids " + too_long.format(
            n=dec_limit + 1, limit=dec_limit)):
        model(input_ids=x, decoder_input_ids=torch.randint(4, 99, (1, dec_limit + 1)))
    states = model.encoder(input_ids=x).last_hidden_state
    with pytest.raises(ValueError, match=too_long.format(n=dec_limit + 1, limit=dec_limit)):
        model.init_cache(states, None, 1, dec_limit + 1)
    cache = model.init_cache(states, None, 1, dec_limit)
    _, cache = model.decode_step(y[:, :1], cache, dec_limit - 1, None)  # the last position
    with pytest.raises(ValueError, match=f"2 tokens after {dec_limit - 1} cached ones"):
        model.decode_step(y[:, :2], cache, dec_limit - 1, None)
    assert model.generate(x, max_new_tokens=dec_limit - 1, eos_token_id=None).shape[1] \
        == dec_limit
    with pytest.raises(ValueError, match=f"max_length={dec_limit + 1}"):
        model.generate(x, max_new_tokens=dec_limit, eos_token_id=None)
    with pytest.raises(ValueError, match="input_ids " + too_long.format(n=enc_limit + 1,
                                                                        limit=enc_limit)):
        model.generate(torch.randint(4, 99, (1, enc_limit + 1)), max_new_tokens=2)


@pytest.mark.parametrize("name", ["roberta2roberta", "electra2electra", "distilbert2gpt2"])
def test_against_hf_outputs_of_every_layer(name, reference_dir, hf_model):
    """Hidden states and attentions (eager reference) of the new families."""
    d = reference_dir(name)
    ref, ours = hf_model(d, attn="eager"), EncoderDecoderModel.from_pretrained(d)
    b = to_torch(pair_batch(name))
    kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
              output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        r, o = ref(**kw), ours(**kw)
    for key in ("logits", "encoder_hidden_states", "encoder_attentions", "decoder_hidden_states",
                "decoder_attentions", "cross_attentions"):
        assert max_diff(r[key], o[key]) < 1e-5, key
    assert abs(r.loss.item() - o.loss.item()) < 1e-5


def test_bert_family_class_serves_any_member():
    """The family class builds any member's layout (what EncoderDecoderModel relies on)."""
    for arch in ARCHITECTURES:
        if arch.family != "bert":
            continue
        model = encdec.pt.BertModel(_tiny(arch))
        assert (model.pooler is not None) == arch.has_pooler
        assert set(model.state_dict()) == {p.name for p in model.table().params}
    assert encdec.pt.BertModel(BertConfig(**FAMILY_SIZES["bert"](32))).pooler is not None
