"""The harness over (architecture pair x backend) against transformers' PyTorch
`EncoderDecoderModel` (issue 8), written once, parametrised. Every pair of
`tests.conftest.PAIRS` in every backend: every output (logits, loss, hidden states and
attentions of both sides, with a padded decoder mask; the tuple of `return_dict=False`) and
saving (bit-identical tensors, transformers loads it). The costly checks — cached decoding with
legacy `past_key_values`, greedy and 4-beam generation — run on `DECODE_NAMES`: one pair per
decoder model type and projection (decoding is the decoder's code: the other pairs differ from
these by their encoder only, or by tying, which the forward and save checks cover). Two
batches on the fast pairs: rows with no visible key, and `inputs_embeds` / `encoder_outputs` in
place of ids; and RoBERTa's position limit.

Tiers (declared here; pairs outside FAST_PAIRS are slow anyway): cached decoding is fast in pt
(tf and flax: their generate tokens and tests/harness/test_decoding.py), generation in pt and
for bert2bert in every backend."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core import EncoderDecoderConfig
from encdec.core.registry import max_positions
from tests import tolerances as tol
from tests.conftest import PAIRS, pair_batch
from tests.generation import oracle
from tests.harness.backends import ADAPTERS, _numpy

NAMES = list(PAIRS)
BACKENDS = list(ADAPTERS)
REFERENCE_OUTPUTS = ("logits", "loss", "encoder_last_hidden_state")
ALL_OUTPUTS = ("logits", "loss", "decoder_hidden_states", "decoder_attentions",
               "cross_attentions", "encoder_last_hidden_state", "encoder_hidden_states",
               "encoder_attentions")
DECODE_NAMES = ["bert2bert", "bert2bert_proj", "bert2gpt2", "bert2gpt2_proj", "roberta2roberta",
                "electra2electra", "bertgeneration2bertgeneration", "bert2bart",
                "bert2bart_proj", "roberta2mbart", "bert2marian", "bert2pegasus"]


GREEDY_COMPILED = {"bert2bert", "bert2gpt2", "bert2bart"}


def cases(names: list[str], fast) -> list:
    """(name, backend) parameters, marked slow unless `fast(name, backend)`."""
    return [pytest.param(n, b, marks=() if fast(n, b) else pytest.mark.slow)
            for n in names for b in BACKENDS]


def batch(name: str) -> dict[str, np.ndarray]:
    """Pair `name`'s padded batch: labels with -100 and a padded decoder mask."""
    b = pair_batch(name, seed=1)
    b["decoder_attention_mask"] = np.ones_like(b["decoder_input_ids"])
    b["decoder_attention_mask"][1, -2:] = 0
    return b


def torch_forward(model, inputs: dict[str, np.ndarray], keys=REFERENCE_OUTPUTS, **kw) -> dict:
    """A transformers model's forward on numpy inputs -> numpy outputs named in `keys`."""
    import torch

    with torch.no_grad():
        out = model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}, **kw)
    return {k: _numpy(out[k]) for k in keys if out.get(k) is not None}


@functools.cache
def reference_outputs(name: str) -> dict[str, np.ndarray]:
    return torch_forward(oracle.reference(name), batch(name))


@functools.cache
def reference_eager(name: str):
    """The oracle's checkpoint in transformers with eager attention (the implementation that
    returns attentions)."""
    import transformers as tr

    return tr.EncoderDecoderModel.from_pretrained(oracle.checkpoint(name),
                                                  attn_implementation="eager").eval()


_OURS: dict[tuple[str, str], dict] = {}


def our_outputs(adapters, ours, name: str, backend: str) -> dict:
    """Our forward of `batch(name)` with hidden states and attentions (once per session)."""
    if (name, backend) not in _OURS:
        _OURS[name, backend] = adapters[backend].forward(
            ours(name, backend), batch(name), output_hidden_states=True, output_attentions=True)
    return _OURS[name, backend]


@functools.cache
def reference_tokens(name: str, beams: int) -> tuple[int, np.ndarray]:
    """(eos id, the reference's tokens): 8 new tokens, eos chosen so that rows stop early."""
    ref = oracle.reference(name)
    x, a = oracle.batch(0, name=name)
    eos = oracle.eos_at_step(ref, x, a)
    return eos, oracle.hf_generate(ref, x, a, eos_token_id=eos, max_new_tokens=8,
                                   num_beams=beams)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_outputs(ours, adapters, name, backend):
    """Every output with a padded decoder mask, and `return_dict=False`'s tuple (the
    reference's order; its cache object and our legacy cache left out)."""
    import torch

    got = our_outputs(adapters, ours, name, backend)
    kw = dict(output_hidden_states=True, output_attentions=True)
    want = torch_forward(reference_eager(name), batch(name), ALL_OUTPUTS, **kw)
    assert got.keys() == want.keys() == set(ALL_OUTPUTS)
    for key in want:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{name} {backend} {key}")
    ad, ref = adapters[backend], reference_eager(name)
    with torch.no_grad():
        rt = ref(**{k: torch.from_numpy(v) for k, v in batch(name).items()}, **kw,
                 return_dict=False)
    ot = ours(name, backend)(**ad.inputs(batch(name)), **kw, return_dict=False)
    assert len(rt) == len(ot)
    for i, (r, o) in enumerate(zip(rt, ot, strict=True)):
        if hasattr(r, "shape") or isinstance(r, tuple) and hasattr(r[0], "shape"):
            tol.assert_close(_numpy(o), _numpy(r), tol.FORWARD, f"{name} {backend} tuple[{i}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2"])
def test_against_hf_fully_masked_rows(ours, adapters, name, backend):
    """Left padding at decoder position 0 and an all-padding source row: a query with no
    visible key gives what the reference's default (SDPA) attention gives."""
    b = batch(name)
    b["attention_mask"][1] = 0
    b["decoder_attention_mask"][0, :2] = 0
    got = adapters[backend].forward(ours(name, backend), b)["logits"]
    tol.assert_close(got, torch_forward(oracle.reference(name), b)["logits"], tol.FORWARD,
                     f"{name} {backend} fully masked rows")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2_proj"])
def test_against_hf_embeds_and_encoder_outputs(ours, adapters, name, backend):
    """`inputs_embeds` + `decoder_inputs_embeds` in place of ids, and `encoder_outputs` (a
    tuple) in place of the encoder."""
    import torch

    ad, model, ref, b = adapters[backend], ours(name, backend), oracle.reference(name), batch(name)
    del b["labels"], b["decoder_attention_mask"]
    with torch.no_grad():
        embeds = dict(
            inputs_embeds=ref.encoder.get_input_embeddings()(torch.from_numpy(b["input_ids"])),
            decoder_inputs_embeds=ref.decoder.get_input_embeddings()(
                torch.from_numpy(b["decoder_input_ids"])))
    embeds = dict({k: v.numpy() for k, v in embeds.items()}, attention_mask=b["attention_mask"])
    want = torch_forward(ref, embeds)
    tol.assert_close(ad.forward(model, embeds)["logits"], want["logits"], tol.FORWARD,
                     f"{name} {backend} embeds")
    states = want["encoder_last_hidden_state"]
    del b["input_ids"]
    got = ad.forward(model, b, encoder_outputs=(ad.inputs({"s": states})["s"],))["logits"]
    tol.assert_close(got, torch_forward(ref, b, encoder_outputs=(torch.from_numpy(states),))[
        "logits"], tol.FORWARD, f"{name} {backend} encoder_outputs")


@pytest.mark.parametrize("name, backend", cases(DECODE_NAMES, lambda n, b: b == "pt"))
def test_cached_decoding_matches_full_forward(ours, adapters, name, backend):
    """Legacy `past_key_values`: a 3-token prefix (the encoder's output object given), then one
    token at a time (its states as a tuple), equal our full forward and the reference's."""
    ad, model = adapters[backend], ours(name, backend)
    b = pair_batch(name, seed=2)
    del b["labels"]
    full = ad.forward(model, b)["logits"]
    ids, n = b["decoder_input_ids"], b["decoder_input_ids"].shape[1]
    mask = ad.inputs({"attention_mask": b["attention_mask"]})
    encoder_outputs = model.encoder(**ad.inputs({"input_ids": b["input_ids"]}), **mask)
    past, steps, layers = None, [], model.config.decoder.num_hidden_layers
    for a, z in [(0, 3), *((t, t + 1) for t in range(3, n))]:
        out = model(**mask, **ad.inputs({"decoder_input_ids": ids[:, a:z]}), use_cache=True,
                    encoder_outputs=encoder_outputs, past_key_values=past)
        past, encoder_outputs = out.past_key_values, (out.encoder_last_hidden_state,)
        assert len(past) == layers and all(len(p) == 4 and p[0].shape[2] == z for p in past)
        steps.append(_numpy(out.logits))
    steps = np.concatenate(steps, axis=1)
    tol.assert_close(steps, full, tol.CACHE, f"{name} {backend} cache")
    tol.assert_close(steps, torch_forward(oracle.reference(name), b)["logits"], tol.FORWARD,
                     f"{name} {backend} cache vs transformers")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_against_hf_loads_what_we_save(ours, adapters, name, backend, tmp_path):
    """Our save holds the checkpoint's tensors bit for bit, and transformers loads it."""
    import transformers as tr

    adapters[backend].save(ours(name, backend), tmp_path)
    source = load_file(f"{oracle.checkpoint(name)}/model.safetensors")
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == source.keys()
    for k in source:
        assert saved[k].dtype == source[k].dtype and np.array_equal(saved[k], source[k]), k
    ref = tr.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ref.config.decoder.model_type == PAIRS[name].decoder
    got, want = torch_forward(ref, batch(name)), reference_outputs(name)
    for key in want:
        tol.assert_close(got[key], want[key], tol.FORWARD, f"{name} {backend} reloaded {key}")


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, backend",
                         cases(DECODE_NAMES, lambda n, b: b == "pt" or n == "bert2bert"))
def test_against_hf_generate_greedy_and_beam(ours, adapters, name, backend):
    """Greedy and 4-beam tokens equal the reference's. In tf and flax each search is a compiled
    program: greedy (the same loop for every decoder) on one pair per decoder family, beams
    (the same step) on every pair."""
    x, a = oracle.batch(0, name=name)
    greedy = backend == "pt" or name in GREEDY_COMPILED
    for beams in (1, 4) if greedy else (4,):
        eos, want = reference_tokens(name, beams)
        got = adapters[backend].generate(ours(name, backend), x, a, eos_token_id=eos,
                                         max_new_tokens=8, num_beams=beams)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {backend} beams={beams}")


# slow: the limit is checked on the host by the core for every backend (tests/test_bad_inputs.py
# in pt, tf and flax); generate at the limit in the fast subset: tests/generation/
# test_generation.py's BART-family limit in pt
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("backend", BACKENDS)
def test_against_hf_position_limit(ours, adapters, backend):
    """RoBERTa's positions start at pad + 1: exactly `max_positions` tokens work on either side
    (as in transformers), one more is a ValueError naming the limit — in forward and generate."""
    name = "roberta2roberta"
    ad, model, ref = adapters[backend], ours(name, backend), oracle.reference(name)
    config = EncoderDecoderConfig.from_pretrained(oracle.checkpoint(name))
    n = max_positions(config.encoder)
    assert n == max_positions(config.decoder) == config.encoder.max_position_embeddings - 2
    rng = np.random.default_rng(0)
    edge = dict(input_ids=rng.integers(4, 99, (2, n)),
                decoder_input_ids=rng.integers(4, 99, (2, n)))
    tol.assert_close(ad.forward(model, edge)["logits"], torch_forward(ref, edge)["logits"],
                     tol.FORWARD, f"{backend} {n} positions")
    limit = rf"\b{n}\b"
    for side in edge:
        over = dict(edge, **{side: rng.integers(4, 99, (2, n + 1))})
        with pytest.raises(ValueError, match=limit):
            ad.forward(model, over)
    # generate: an n-token source and a decoder that reaches exactly n positions
    x = edge["input_ids"]
    want = oracle.hf_generate(ref, x, None, max_new_tokens=n - 1, eos_token_id=None)
    np.testing.assert_array_equal(
        ad.generate(model, x, None, max_new_tokens=n - 1, eos_token_id=None), want)
    with pytest.raises(ValueError, match=limit):
        ad.generate(model, x, None, max_new_tokens=n, eos_token_id=None)
    with pytest.raises(ValueError, match=limit):
        ad.generate(model, rng.integers(4, 99, (2, n + 1)), None, max_new_tokens=2)
