"""Cross-backend parity harness (issue #3): random weights made once, loaded into every
backend, compared pairwise within DESIGN.md's bounds — forward outputs, gradients, save/load
across backends (bit-identical tensors) and cached decoding against a full forward."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core import EncoderDecoderConfig
from encdec.core.weights import encoder_decoder_table
from tests.conftest import make_batch
from tests.parity.backends import ADAPTERS, _numpy

# DESIGN.md's one tolerance table for these checks (fp32, CPU)
FORWARD_ATOL = 1e-5  # logits, loss, hidden states, attentions: backend vs backend
GRAD_ATOL = 1e-4  # gradients of the loss
CACHE_ATOL = 1e-5  # incremental decoding with cache vs one full forward

MODELS = ["bert2bert", "bert2gpt2", "bert2bert_proj", "bert2gpt2_proj"]
PAIRS = list(itertools.combinations(ADAPTERS, 2))


@pytest.fixture(scope="module")
def adapters():
    return {name: cls() for name, cls in ADAPTERS.items()}


@pytest.fixture(scope="module")
def loaded(reference_dir, adapters):
    """(model name, backend) -> model, each loaded once from the same checkpoint."""
    cache = {}

    def get(name, backend):
        if (name, backend) not in cache:
            cache[name, backend] = adapters[backend].load(reference_dir(name))
        return cache[name, backend]

    return get


def _batch():
    b = make_batch(seed=1)
    b["decoder_attention_mask"] = np.ones_like(b["decoder_input_ids"])
    b["decoder_attention_mask"][1, -2:] = 0
    return b


def _assert_close(a, b, atol, what):
    if isinstance(a, tuple):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, atol, f"{what}[{i}]")
        return
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    assert diff <= atol, f"{what}: max |diff| {diff:.3g} > {atol}"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("a, b", PAIRS)
def test_forward_parity(loaded, adapters, name, a, b):
    batch = {k: v for k, v in _batch().items()}
    kw = dict(output_hidden_states=True, output_attentions=True)
    out_a = adapters[a].forward(loaded(name, a), batch, **kw)
    out_b = adapters[b].forward(loaded(name, b), batch, **kw)
    assert out_a.keys() == out_b.keys()
    assert {"logits", "loss", "decoder_hidden_states", "cross_attentions"} <= out_a.keys()
    for key in out_a:
        _assert_close(out_a[key], out_b[key], FORWARD_ATOL, f"{name} {a}-{b} {key}")


def _grad_sample(config: EncoderDecoderConfig):
    table = encoder_decoder_table(config)
    wanted = ("encoder.embeddings.word_embeddings.weight",
              "encoder.encoder.layer.0.attention.self.query.weight",
              "encoder.encoder.layer.1.output.LayerNorm.weight",
              "decoder.bert.embeddings.word_embeddings.weight",
              "decoder.bert.encoder.layer.0.crossattention.self.key.weight",
              "decoder.bert.encoder.layer.1.output.dense.bias",
              "decoder.cls.predictions.bias",
              "decoder.transformer.wte.weight",
              "decoder.transformer.h.0.crossattention.q_attn.weight",
              "decoder.transformer.h.1.mlp.c_fc.weight",
              "decoder.transformer.ln_f.bias",
              "enc_to_dec_proj.weight")
    return [table.by_name[n] for n in wanted if n in table.by_name]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("a, b", PAIRS)
def test_gradient_parity(reference_dir, adapters, name, a, b):
    # fresh models: gradients must not depend on what other tests did to a shared model
    params = _grad_sample(EncoderDecoderConfig.from_pretrained(reference_dir(name)))
    batch = _batch()
    ga = adapters[a].grads(adapters[a].load(reference_dir(name)), batch, params)
    gb = adapters[b].grads(adapters[b].load(reference_dir(name)), batch, params)
    assert len(ga) >= 6
    for p in params:
        assert np.abs(ga[p.name]).max() > 0, f"{a}: zero gradient for {p.name}"
        _assert_close(ga[p.name], gb[p.name], GRAD_ATOL, f"{name} {a}-{b} grad {p.name}")


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
@pytest.mark.parametrize("a, b", [*PAIRS, *[(y, x) for x, y in PAIRS]])
def test_save_in_one_load_in_another(reference_dir, loaded, adapters, tmp_path, name, a, b):
    source = load_file(reference_dir(name) / "model.safetensors")
    adapters[a].save(loaded(name, a), tmp_path / a)
    model_b = adapters[b].load(tmp_path / a)
    adapters[b].save(model_b, tmp_path / b)
    for directory in (tmp_path / a, tmp_path / b):
        saved = load_file(directory / "model.safetensors")
        assert saved.keys() == source.keys()
        for k in source:
            assert saved[k].dtype == source[k].dtype and np.array_equal(saved[k], source[k]), k
    batch = _batch()
    _assert_close(adapters[a].forward(loaded(name, a), batch)["logits"],
                  adapters[b].forward(model_b, batch)["logits"], FORWARD_ATOL, f"{a}->{b}")


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "bert2gpt2_proj"])
@pytest.mark.parametrize("backend", list(ADAPTERS))
def test_cached_decoding_matches_full_forward(loaded, adapters, name, backend):
    ad = adapters[backend]
    model = loaded(name, backend)
    batch = make_batch(seed=2)
    del batch["labels"]
    full = ad.forward(model, batch)["logits"]
    ids, n = batch["decoder_input_ids"], batch["decoder_input_ids"].shape[1]
    inputs = ad.inputs({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    past, encoder_outputs, steps = None, None, []
    for t in range(n):
        step = ad.inputs({"decoder_input_ids": ids[:, t:t + 1]})
        out = model(**inputs, **step, encoder_outputs=encoder_outputs, past_key_values=past,
                    use_cache=True)
        past, encoder_outputs = out.past_key_values, (out.encoder_last_hidden_state,)
        steps.append(_numpy(out.logits))
    _assert_close(np.concatenate(steps, axis=1), full, CACHE_ATOL, f"{backend} {name} cache")
