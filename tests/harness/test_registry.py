"""Every backend on the registry, per architecture: the reference-named backbone classes (their
config class, the family layout they build, init by the registry's rules, ties through the
table, save and load), the model-type check of `from_pretrained`, and the position limits of
forward, the decoding cache, the decode step and generate. (Compiled forms of the limits:
tests/tf/test_xla_position_limits.py, tests/flax/test_jit_position_limits.py.)"""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest

from encdec.core import ConfigError, EncoderDecoderConfig
from encdec.core.registry import ARCHITECTURES, architecture, initializers, max_positions
from tests import tolerances as tol
from tests.conftest import tiny_kwargs
from tests.generation import oracle
from tests.harness.backends import outputs_to_numpy
from tests.harness.test_architectures import batch

# one architecture per family in the fast subset (RoBERTa: BERT's family with padding rows and
# ties through the head's bias); the other members run the same family code with other registry
# data: CI
FAST_ARCHS = ("roberta", "distilbert", "gpt2", "bart")
EVERY_LAYER = dict(output_attentions=True, output_hidden_states=True)
ARCHS = [pytest.param(a, id=a.name, marks=() if a.name in FAST_ARCHS else pytest.mark.slow)
         for a in ARCHITECTURES]


def tiny(arch, **kw):
    """A tiny config of `arch` (padding id 0 where the default lies outside the vocabulary)."""
    pad = arch.config_class().pad_token_id
    return arch.config_class(**{**tiny_kwargs(arch.name),
                                **({"pad_token_id": 0} if pad is not None and pad >= 99 else {}),
                                **kw})


def assert_initialised_by_the_rules(state, table, config) -> None:
    """Each owned parameter as `registry.initializers` says (the reference's `_init_weights`,
    itself checked in tests/core/test_registry.py): ones, zeros, a fixed table, or
    normal(0, std) with the padding row zeroed (bounds: 5 standard errors)."""
    for p, init in initializers(table, config):
        w = state[p.name].astype(np.float64)
        if init.kind == "array":
            np.testing.assert_array_equal(state[p.name], init.array, err_msg=p.name)
        elif init.kind in ("ones", "zeros"):
            assert (w == (init.kind == "ones")).all(), p.name
        else:
            rows = np.ones(len(w), bool)
            if init.zero_row is not None:
                assert not w[init.zero_row].any(), f"{p.name}: row {init.zero_row} not zero"
                rows[init.zero_row] = False
            n = w[rows].size
            assert abs(w[rows].std() - init.std) < 5 * init.std / np.sqrt(2 * n), \
                (p.name, w[rows].std(), init.std)
            assert abs(w[rows].mean()) < 5 * init.std / np.sqrt(n), p.name


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_classes(backend, arch, tmp_path):
    """Each reference-named class of `arch` (a subclass of its family's class: the family's
    layout, the member's data) holds exactly the table's owned parameters (tied ones shared,
    the pooler where the reference has one), initialised by the registry's rules; it saves
    under its own name and loads back bit for bit."""
    module = backend.module
    for name, flags in ((arch.base_class, {}),
                        (arch.lm_class, dict(is_decoder=True, add_cross_attention=True))):
        if name is None:  # no causal LM (DistilBERT); the BART family is decoder-only
            continue
        cls = getattr(module, name)
        assert cls.config_class is arch.config_class, name
        model = cls(tiny(arch, **flags))
        table = model.table()
        assert backend.n_params(model) == len(table.owned), name
        state = {p.name: backend.param(model, p) for p in table.owned}
        if name == arch.base_class:
            assert any(".pooler." in f".{n}" for n in state) == arch.has_pooler, name
        assert_initialised_by_the_rules(state, table, model.config)
        model.save_pretrained(tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["architectures"] \
            == [name]
        again = cls.from_pretrained(tmp_path / name)
        assert type(again) is cls
        for p in table.owned:
            np.testing.assert_array_equal(backend.param(again, p), state[p.name],
                                          err_msg=f"{name} {p.name}")


def test_tied_composite_holds_each_weight_once(backend):
    """`tie_encoder_decoder`: the decoder's base shares the encoder's parameters (and the LM
    head the word embeddings): the model holds the table's owned parameters only."""
    roberta = architecture("roberta")
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        tiny(roberta), tiny(roberta, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=True)
    model = backend.module.EncoderDecoderModel(config=config)
    assert backend.n_params(model) == len(model.table().owned)


def test_from_pretrained_refuses_another_model_type(backend, tmp_path):
    module, roberta = backend.module, architecture("roberta")
    module.RobertaModel(tiny(roberta)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model_type 'roberta' is not a BertConfig.*RobertaModel"):
        module.BertModel.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model_type 'roberta' is not a XLMRobertaConfig"):
        module.XLMRobertaModel.from_pretrained(tmp_path)


def too_long(argument: str, n: int, config, past: int = 0) -> str:
    """The core's message (`registry.check_length`) for `n` tokens after `past` cached ones."""
    limit = max_positions(config)
    offset = config.max_position_embeddings - limit
    held = f"{n} tokens" + (f" after {past} cached ones" if past else "")
    table = f"max_position_embeddings={config.max_position_embeddings}" + \
        (f" minus the offset {offset}" if offset > 0 else "")
    return re.escape(f"{argument} has {held}; the {config.model_type} position table serves "
                     f"{limit} ({table})")


# flax's eager decode step is the slowest to warm up: CI (its compiled forms stay in the fast
# subset, tests/flax/test_jit_position_limits.py)
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", ["pt", "tf", pytest.param("flax", marks=pytest.mark.slow)],
                         indirect=True)
@pytest.mark.parametrize("name", ["bert2gpt2", "roberta2roberta", "distilbert2bert", "bert2bart",
                                  "bert2marian"])
def test_position_limit_edges(ours, backend, name):
    """One token more than the table serves (RoBERTa: max_position_embeddings - pad - 1; BERT,
    DistilBERT, GPT-2, BART's learned and Marian's sinusoidal tables: max_position_embeddings)
    is a ValueError naming the argument and the limit: in forward (both sides, ids and
    embeddings), the decoding cache, the decode step and generate, all checked on the host
    before any gather or compiled step; a cache of exactly the table and a step at its last
    position work. (Forward and generate at the edge against the reference:
    test_architectures.py's `test_against_hf_position_limit`, BART-family decoders
    tests/generation/test_pt_generation.py.)"""
    model, inputs = ours(name, backend.name), backend.inputs
    config = model.config
    enc, dec = config.encoder, config.decoder
    n, m = max_positions(enc), max_positions(dec)
    rng = np.random.default_rng(0)
    x, y = rng.integers(4, 99, (1, 4)), rng.integers(4, 99, (1, 2))
    with pytest.raises(ValueError, match=too_long("input_ids", n + 1, enc)):
        backend.forward(model, dict(input_ids=rng.integers(4, 99, (1, n + 1)),
                                    decoder_input_ids=y))
    with pytest.raises(ValueError, match=too_long("decoder_input_ids", m + 1, dec)):
        backend.forward(model, dict(input_ids=x,
                                    decoder_input_ids=rng.integers(4, 99, (1, m + 1))))
    with pytest.raises(ValueError, match=too_long("inputs_embeds", n + 1, enc)):
        model.encoder(**inputs(dict(inputs_embeds=np.zeros((1, n + 1, 32), np.float32))))
    states = model.encoder(**inputs(dict(input_ids=x))).last_hidden_state
    with pytest.raises(ValueError, match=too_long("the decoding cache (max_length)", m + 1, dec)):
        model.init_cache(states, None, 1, m + 1)
    cache = model.init_cache(states, None, 1, m)
    step = inputs(dict(ids=y))["ids"]
    logits, _ = model.decode_step(step[:, :1], cache, m - 1, None)  # the last position
    assert tuple(logits.shape) == (1, 1, 99)
    with pytest.raises(ValueError, match=too_long("input_ids", 2, dec, past=m - 1)):
        model.decode_step(step, cache, m - 1, None)
    with pytest.raises(ValueError, match=f"max_length={m + 1}"):
        backend.generate(model, x, None, max_new_tokens=m, eos_token_id=None)
    with pytest.raises(ValueError, match=too_long("input_ids", n + 1, enc)):
        backend.generate(model, rng.integers(4, 99, (1, n + 1)), None, max_new_tokens=2)


@functools.cache
def reference_every_layer(name: str) -> dict:
    """The reference's outputs of every layer on `batch(name)` (eager attention: the only
    implementation that returns attentions)."""
    import torch
    import transformers as tr

    ref = tr.EncoderDecoderModel.from_pretrained(oracle.checkpoint(name),
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(**{k: torch.from_numpy(v) for k, v in batch(name).items()}, **EVERY_LAYER)
    return outputs_to_numpy(out)


@pytest.mark.parametrize("name", ["roberta2roberta", "electra2electra", "distilbert2gpt2"])
def test_against_hf_outputs_of_every_layer(ours, backend, name):
    """Hidden states and attentions of every layer, logits and loss, against the reference."""
    got = backend.forward(ours(name, backend.name), batch(name), **EVERY_LAYER)
    want = reference_every_layer(name)
    assert {"encoder_attentions", "decoder_hidden_states", "cross_attentions"} <= want.keys()
    assert got.keys() == want.keys()
    for key in want:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{name} {backend.name} {key}")
