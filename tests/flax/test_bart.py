"""The BART-family decoder in Flax NNX (issue 9) against transformers' own `*ForCausalLM`
(no composite) on the same weights, for bart, mbart, marian and pegasus: logits, loss and
hidden states with a padded decoder mask (with and without encoder states), incremental
decoding through legacy `past_key_values`, the `inputs_embeds` scaling rule, gradients, the
training mode (dropout, layerdrop) and `nnx.jit`; warm start from the reference's seq2seq
saves (`*ForConditionalGeneration` / `*Model`: encoder dropped, `model.shared.weight` standing
in for `embed_tokens`, both reported)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import encdec.flax
from encdec.core.registry import architecture
from encdec.core.weights import Dialect, from_dialect, leaf
from encdec.flax import EncoderDecoderModel, params
from tests import tolerances as tol
from tests.conftest import tiny_kwargs

from .conftest import to_torch

ARCHS = ("bart", "mbart", "marian", "pegasus")
PAD = 1


def hf_config(model_type: str, **overrides):
    """A tiny transformers config of `model_type`, embedding scale on (so that the scaling rule
    shows), a padding id inside the tiny vocabulary."""
    import transformers as tr

    kw = {**tiny_kwargs(model_type), "scale_embedding": True, "pad_token_id": PAD,
          "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2, **overrides}
    return tr.AutoConfig.for_model(model_type, **kw)


def perturb(model, seed: int) -> None:
    """Non-trivial norms and biases, matrices at std 0.15 (a wrong leaf cannot hide); fixed
    sinusoidal tables (frozen) keep their values."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.dim() == 2:
                p.normal_(0.0, 0.15, generator=g)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """model_type -> (transformers' `*ForCausalLM` in eval mode, the directory it saved)."""
    import transformers as tr

    out = {}
    for i, mt in enumerate(ARCHS):
        model = tr.AutoModelForCausalLM.from_config(hf_config(mt, is_decoder=True))
        assert type(model).__name__ == architecture(mt).lm_class
        perturb(model, i)
        d = tmp_path_factory.mktemp(mt)
        model.save_pretrained(d)
        out[mt] = (model.eval(), d)
    return out


def ours(causal, mt: str):
    cls = getattr(encdec.flax, architecture(mt).lm_class)
    return cls.from_pretrained(causal[mt][1])


def inputs(seed: int = 0, batch: int = 3, length: int = 7, src: int = 5) -> dict:
    """Decoder ids (no padding id) with a padded mask, encoder states and a padded mask, and
    labels with -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 99, (batch, length))
    mask = np.ones((batch, length), np.int64)
    mask[1, -2:] = 0
    enc = rng.normal(size=(batch, src, 32)).astype(np.float32)
    enc_mask = np.ones((batch, src), np.int64)
    enc_mask[0, -2:] = 0
    labels = rng.integers(4, 99, (batch, length))
    labels[1, -2:] = -100
    return dict(input_ids=ids, attention_mask=mask, encoder_hidden_states=enc,
                encoder_attention_mask=enc_mask, labels=labels)


def torch_out(model, batch: dict, **kw):
    import torch

    with torch.no_grad():
        return model(**to_torch(batch), **kw)


def jnp_batch(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("mt", ARCHS)
@pytest.mark.parametrize("cross", [True, False], ids=["cross", "no-cross"])
def test_against_hf_causal_lm_forward(causal, mt, cross):
    """Logits, (unshifted) loss and hidden states vs the reference's causal LM, padded mask."""
    ref, model = causal[mt][0], ours(causal, mt)
    b = inputs(seed=1)
    if not cross:
        del b["encoder_hidden_states"], b["encoder_attention_mask"]
    want = torch_out(ref, b, output_hidden_states=True)
    got = model(**jnp_batch(b), output_hidden_states=True)
    tol.assert_close(got.logits, want.logits.numpy(), tol.FORWARD, f"{mt} logits")
    tol.assert_close(got.loss, want.loss.numpy(), tol.FORWARD, f"{mt} loss")
    tol.assert_close(got.hidden_states, tuple(h.numpy() for h in want.hidden_states),
                     tol.FORWARD, f"{mt} hidden states")


@pytest.mark.parametrize("mt", ARCHS)
def test_incremental_decoding_with_legacy_past(causal, mt):
    """A 3-token prefix, then one token at a time through `past_key_values` (self and cross
    K/V), equals one full forward, under `nnx.jit` as well as eagerly."""
    ref, model = causal[mt][0], ours(causal, mt)
    b = inputs(seed=2)
    del b["labels"], b["attention_mask"]
    full = torch_out(ref, b).logits.numpy()
    ids, enc = jnp.asarray(b["input_ids"]), jnp.asarray(b["encoder_hidden_states"])
    enc_mask = jnp.asarray(b["encoder_attention_mask"])

    def run(m, ids, past):
        return m(input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask,
                 past_key_values=past, use_cache=True)

    for fn in (run, nnx.jit(run)):
        out = fn(model, ids[:, :3], None)
        steps, past = [out.logits], out.past_key_values
        assert len(past) == 2 and len(past[0]) == 4 and past[0][0].shape == (3, 4, 3, 8)
        for t in range(3, ids.shape[1]):
            out = fn(model, ids[:, t:t + 1], past)
            steps.append(out.logits)
            past = out.past_key_values
        tol.assert_close(np.concatenate(steps, axis=1), full, tol.CACHE, f"{mt} cache")


@pytest.mark.parametrize("mt", ARCHS)
def test_inputs_embeds_scaling_rule(causal, mt):
    """BART and mBART scale inside the lookup (caller `inputs_embeds` unscaled), Marian and
    Pegasus after it (caller `inputs_embeds` scaled too): as the reference, and as the rule."""
    ref, model = causal[mt][0], ours(causal, mt)
    b = inputs(seed=3)
    del b["labels"]
    ids = b.pop("input_ids")
    emb = np.asarray(model.get_input_embeddings().embedding[...])[ids]  # (B, T, H) unscaled
    want = torch_out(ref, dict(b, inputs_embeds=emb)).logits.numpy()
    got = model(**jnp_batch(b), inputs_embeds=jnp.asarray(emb)).logits
    tol.assert_close(got, want, tol.FORWARD, f"{mt} inputs_embeds")
    scale = model.config.embed_scale
    assert scale == 32 ** 0.5
    layout = architecture(mt).layout
    same = emb if layout.scale_inputs_embeds else emb * np.float32(scale)
    by_ids = model(**jnp_batch(b), input_ids=jnp.asarray(ids)).logits
    by_embeds = model(**jnp_batch(b), inputs_embeds=jnp.asarray(same)).logits
    tol.assert_close(by_embeds, by_ids, tol.FORWARD, f"{mt} scaling rule")


@pytest.mark.parametrize("mt", ARCHS)
def test_against_hf_gradients(causal, mt):
    """Every parameter's gradient of the loss under `nnx.jit` (the tied `lm_head` summed into
    `embed_tokens`); the fixed sinusoidal table gets none, as the reference's frozen one."""
    import torch

    ref, model = causal[mt][0], ours(causal, mt)
    b = inputs(seed=4)
    ref.zero_grad()
    ref(**to_torch(b)).loss.backward()
    loss, grads = nnx.jit(nnx.value_and_grad(lambda m, x: m(**x).loss))(model, jnp_batch(b))
    flat = {".".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(grads)}
    ref_grads = dict(ref.named_parameters())
    owned = model.table().owned
    assert len(flat) == len(owned)
    for p in owned:
        g = from_dialect(p, np.asarray(flat[leaf(p, Dialect.NNX)]), Dialect.NNX)
        r = ref_grads[p.name].grad
        want = np.zeros_like(g) if r is None else r.numpy()
        if r is None:
            assert not ref_grads[p.name].requires_grad, p.name  # only the frozen table
        tol.assert_close(g, want, tol.GRAD, f"{mt} grad {p.name}")
    with torch.no_grad():
        assert abs(float(loss) - ref(**to_torch(b)).loss.item()) <= tol.FORWARD


@pytest.mark.parametrize("mt", ["bart", "pegasus"])
def test_training_mode_dropout_and_layerdrop(causal, mt):
    """Dropout (hidden, attention, activation) and layerdrop act in train mode only, under
    `nnx.jit`, and give a finite loss and gradient; layerdrop 1 skips every layer."""
    cfg = dict(dropout=0.2, attention_dropout=0.2, activation_dropout=0.2, decoder_layerdrop=0.5)
    model = getattr(encdec.flax, architecture(mt).lm_class).from_pretrained(
        causal[mt][1], rngs=nnx.Rngs(0, dropout=1), **cfg)
    b = jnp_batch(inputs(seed=5))
    evals = [model(**b).logits for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    model.train()
    step = nnx.jit(nnx.value_and_grad(lambda m, x: m(**x).loss))
    (l1, g1), (l2, _) = step(model, b), step(model, b)
    assert np.isfinite(float(l1)) and float(l1) != float(l2)  # fresh dropout masks per call
    leaves = [np.asarray(v[...]) for _, v in nnx.to_flat_state(g1)]
    assert all(np.isfinite(x).all() for x in leaves) and any(np.abs(x).max() > 0 for x in leaves)
    model.eval()
    np.testing.assert_array_equal(model(**b).logits, evals[0])

    # layerdrop 1: every layer skipped in training -> LM head on the (final-normed) embeddings
    skip = getattr(encdec.flax, architecture(mt).lm_class).from_pretrained(
        causal[mt][1], dropout=0.0, decoder_layerdrop=1.0)
    skip.train()
    got = skip(**b).logits
    dec = skip.base_model
    x = dec.embed(b["input_ids"], None, None, 0)
    if dec.layer_norm is not None:
        x = dec.layer_norm(x)
    np.testing.assert_array_equal(got, skip.logits(x))
    skip.eval()
    assert np.abs(np.asarray(skip(**b).logits - got)).max() > 1e-3


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    """Reference seq2seq saves (class name -> (model, directory)) and a BERT encoder's."""
    import transformers as tr

    out = {}
    for i, (name, mt) in enumerate([("BartForConditionalGeneration", "bart"),
                                    ("MBartModel", "mbart"), ("MarianMTModel", "marian"),
                                    ("PegasusForConditionalGeneration", "pegasus")]):
        model = getattr(tr, name)(hf_config(mt))
        perturb(model, 10 + i)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        out[name] = (model.eval(), d)
    bert = tr.BertModel(tr.BertConfig(**tiny_kwargs("bert")))
    d = tmp_path_factory.mktemp("bert")
    bert.save_pretrained(d)
    out["bert"] = (bert.eval(), d)
    return out


@pytest.mark.parametrize("name", ["BartForConditionalGeneration", "MBartModel", "MarianMTModel",
                                  "PegasusForConditionalGeneration"])
def test_warm_start_from_seq2seq_checkpoint(seq2seq, name, caplog):
    """The decoder of a seq2seq save, bit for bit (cross-attention included): the encoder's
    weights dropped and reported, `shared.weight` standing in for `embed_tokens` (and the tied
    `lm_head`), reported; only what the save lacks (Marian's sinusoidal table) is initialised,
    to the reference's values. Its forward equals the reference decoder's on the encoder's
    states."""
    ref, d = seq2seq[name]
    with caplog.at_level(logging.WARNING, logger="encdec"):
        model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
            seq2seq["bert"][1], d, decoder_start_token_id=2, output_loading_info=True)
    report = info["decoder"]
    keys = load_file(d / "model.safetensors").keys()
    shared = next(k for k in keys if k.endswith("shared.weight"))
    assert report.aliased == [("model.decoder.embed_tokens.weight", shared)]
    assert report.dropped and all("encoder." in k or k == "final_logits_bias"
                                  for k in report.dropped)
    # Marian's seq2seq save leaves its fixed table out (Pegasus's keeps it)
    table = "model.decoder.embed_positions.weight"
    held = table in keys or table.removeprefix("model.") in keys
    assert report.missing == ([] if held else [table])
    assert held or architecture(ref.config.model_type).layout.sinusoid is not None
    assert shared in caplog.text and "model.decoder.embed_tokens.weight" in caplog.text

    dec = model.decoder
    state = {f"model.decoder.{k}": v.detach().numpy()
             for k, v in ref.get_decoder().state_dict().items()}
    for p in dec.table().owned:
        got = from_dialect(p, params.get(dec, leaf(p, Dialect.NNX)),
                           Dialect.NNX)
        np.testing.assert_array_equal(got, state[p.name], err_msg=p.name)
    np.testing.assert_array_equal(np.asarray(dec.logits(jnp.eye(32)[None]))[0],
                                  ref.get_input_embeddings().weight.detach().numpy().T)

    b = inputs(seed=6)
    ids, mask = b["input_ids"], b["attention_mask"]
    enc = np.array(model.encoder(input_ids=jnp.asarray(ids)).last_hidden_state)
    want = torch_out(ref.get_decoder(), dict(input_ids=ids, attention_mask=mask,
                                             encoder_hidden_states=enc))
    got = dec.base_model(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                         encoder_hidden_states=jnp.asarray(enc))
    tol.assert_close(got.last_hidden_state, want.last_hidden_state.numpy(), tol.FORWARD, name)


def test_bart_cannot_be_an_encoder():
    from encdec.core import BartConfig, BertConfig, EncoderDecoderConfig
    from encdec.core.config import ConfigError

    config = EncoderDecoderConfig.from_encoder_decoder_configs(BartConfig(), BertConfig())
    with pytest.raises(ConfigError, match="bart"):
        EncoderDecoderModel(config=config)


def test_jit_decode_step_matches_forward(causal):
    """The static-cache contract of a composite with a BART decoder under `jax.jit`."""
    from encdec.core import BertConfig, EncoderDecoderConfig
    from encdec.core.config import config_from_dict

    dec = config_from_dict(causal["mbart"][0].config.to_dict())
    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(**tiny_kwargs("bert")), dec, decoder_start_token_id=2, pad_token_id=PAD)
    model = EncoderDecoderModel(config=config, rngs=nnx.Rngs(3))
    b = inputs(seed=7)
    x = jnp.asarray(b["input_ids"][:, :5])
    ids = jnp.asarray(b["labels"].clip(4))
    full = model(input_ids=x, decoder_input_ids=ids).logits
    enc = model.encoder(input_ids=x).last_hidden_state
    cache = model.init_cache(enc, None, 3, 10)
    graph, state = nnx.split(model)

    @jax.jit
    def step(state, token, cache, i):
        return nnx.merge(graph, state).decode_step(token, cache, i, None)

    steps = []
    for t in range(ids.shape[1]):
        logits, cache = step(state, ids[:, t:t + 1], cache, jnp.int32(t))
        steps.append(logits)
    tol.assert_close(jnp.concatenate(steps, 1), full, tol.CACHE, "mbart decode_step")
