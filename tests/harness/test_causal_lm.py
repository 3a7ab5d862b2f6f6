"""The BART-family causal LM (`BartForCausalLM`, `MBartForCausalLM`, `MarianForCausalLM`,
`PegasusForCausalLM`; issue 9) in every backend against transformers' own `*ForCausalLM` (no
composite), on one saved checkpoint per member: logits, loss, hidden states and attentions
with a padded decoder mask, with and without encoder states; an untied head; incremental
decoding with legacy `past_key_values`; the embedding-scale rule for caller-given
`inputs_embeds`; gradients (the fixed sinusoidal table of Marian and Pegasus gets none);
training mode (dropout, LayerDrop); the position limit; Marian's own decoder vocabulary and a
decoder object built without `add_cross_attention` inside a composite; a seq2seq save loaded
as the causal LM (and around a given encoder object), with its report.

Every member in every backend: the members differ only by their layout (post- or pre-norm,
learned or sinusoidal positions, where the embedding scale applies), which each check reads.
The fast subset runs `bart`, in pt (in tf and flax: the forward against transformers). Warm
start from seq2seq saves: test_bart_warm_start.py; the compiled forms (XLA, `nnx.jit`):
tests/tf|flax/test_bart.py."""

from __future__ import annotations

import numpy as np
import pytest

from encdec.core.registry import architecture
from tests import tolerances as tol
from tests.conftest import tiny_kwargs
from tests.harness.backends import ADAPTERS, _numpy

ARCHS = ["bart", *(pytest.param(a, marks=pytest.mark.slow) for a in ("mbart", "marian",
                                                                      "pegasus"))]
# the reference's rule: Marian and Pegasus scale after the lookup (so caller-given inputs_embeds
# too); BART and mBART scale inside their scaled word embedding (so not inputs_embeds)
# pt in the fast subset (its checks of a rule are the cheapest), tf and flax in CI
PT_FAST = [pytest.param(b, marks=() if b == "pt" else pytest.mark.slow) for b in ADAPTERS]
SCALES_INPUTS_EMBEDS = {"bart": False, "mbart": False, "marian": True, "pegasus": True}
B, T, S, H = 3, 7, 5, 32


def reference_lm(arch: str, **kwargs):
    """transformers' `*ForCausalLM` of a tiny `arch` config (eager attention, dropout 0, eval
    mode), norms and biases perturbed so a wrong leaf mapping cannot hide behind 1s and 0s."""
    import torch
    import transformers as tr

    config = tr.AutoConfig.for_model(arch, **{**tiny_kwargs(arch), "scale_embedding": True,
                                              "pad_token_id": 0, "dropout": 0.0, **kwargs},
                                     is_decoder=True)
    torch.manual_seed(0)
    model = tr.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert type(model).__name__ == architecture(arch).lm_class
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower():
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def lm(tmp_path_factory, adapters):
    """`lm(arch, backend, **config)` -> (transformers' LM, ours loaded from its save, the
    save's directory), each made once per session (tests must not change them)."""
    refs, ours = {}, {}

    def get(arch: str, backend: str, **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in refs:
            d = tmp_path_factory.mktemp(arch)
            ref = reference_lm(arch, **kwargs)
            ref.save_pretrained(d)
            refs[key] = ref, d
        if (key, backend) not in ours:
            cls = getattr(adapters[backend].module, architecture(arch).lm_class)
            ours[key, backend] = cls.from_pretrained(refs[key][1])
            assert type(ours[key, backend]).__name__ == architecture(arch).lm_class
        return refs[key][0], ours[key, backend], refs[key][1]

    return get


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder ids with a padded mask (and padded labels), encoder states with a padded mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 99, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, -2:] = 0
    mask[2, -1:] = 0
    labels = rng.integers(4, 99, (B, T))
    labels[mask == 0] = -100
    enc_mask = np.ones((B, S), np.int64)
    enc_mask[0, -2:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                encoder_hidden_states=rng.standard_normal((B, S, H)).astype(np.float32),
                encoder_attention_mask=enc_mask)


def torch_out(model, x: dict, **kw):
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in x.items()}, **kw)


def out(backend, model, x: dict, **kw):
    """Our model's output on numpy inputs (arrays as the framework's)."""
    return model(**backend.inputs(x), **kw)


def close(a, b, what: str, atol: float = tol.FORWARD) -> None:
    tol.assert_close(_numpy(a), _numpy(b), atol, what)


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "no-encoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_against_hf_causal_lm(lm, backend, arch, cross):
    ref, ours, _ = lm(arch, backend.name)
    x = inputs()
    if not cross:
        del x["encoder_hidden_states"], x["encoder_attention_mask"]
    kw = dict(output_hidden_states=True, output_attentions=True)
    want, got = torch_out(ref, x, **kw), out(backend, ours, x, **kw)
    for key in ("logits", "loss", "hidden_states", "attentions"):
        close(got[key], want[key], f"{arch} {backend.name} {key}")
    assert len(got.hidden_states) == ours.config.decoder_layers + 1
    if cross:
        close(got.cross_attentions, want.cross_attentions, f"{arch} cross_attentions")
    else:
        assert got.cross_attentions is None and all(len(p) == 2 for p in got.past_key_values)


@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_against_hf_untied_head(lm, backend):
    """tie_word_embeddings=False: `lm_head` is a matrix of its own (saved, loaded, used)."""
    ref, ours, _ = lm("marian", backend.name, tie_word_embeddings=False)
    table = ours.table()
    head = backend.param(ours, table.by_name["lm_head.weight"])
    embed = backend.param(ours, table.by_name["model.decoder.embed_tokens.weight"])
    assert head.shape == embed.shape and not np.array_equal(head, embed)
    x = inputs(8)
    want, got = torch_out(ref, x), out(backend, ours, x)
    close(got.logits, want.logits, "untied logits")
    close(got.loss, want.loss, "untied loss")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_incremental_decoding_with_legacy_past(lm, backend, arch):
    """Token by token, and a 4-token prefix then the rest, with legacy past_key_values, equal
    the full forward (itself the reference's, above)."""
    _, ours, _ = lm(arch, backend.name)
    x = inputs(1)
    del x["labels"]
    ids, mask = x.pop("input_ids"), x.pop("attention_mask")
    full = _numpy(out(backend, ours, dict(x, input_ids=ids, attention_mask=mask)).logits)
    for chunks in ([(t, t + 1) for t in range(T)], [(0, 4), (4, T)]):
        past, steps = None, []
        for a, b in chunks:
            o = out(backend, ours, dict(x, input_ids=ids[:, a:b], attention_mask=mask[:, :b]),
                    past_key_values=past, use_cache=True)
            past = o.past_key_values
            assert all(len(p) == 4 and p[0].shape[2] == b for p in past)
            steps.append(_numpy(o.logits))
        close(np.concatenate(steps, 1), full, f"{arch} {backend.name} {chunks}", tol.CACHE)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_inputs_embeds_scaling_rule(lm, backend, arch):
    ref, ours, _ = lm(arch, backend.name)
    x = inputs(2)
    ids = x.pop("input_ids")
    emb = ref.get_input_embeddings().weight.detach().numpy()[ids]  # the unscaled lookup
    scale = ours.config.embed_scale
    assert scale == H ** 0.5
    got = out(backend, ours, dict(x, inputs_embeds=emb))
    want = torch_out(ref, dict(x, inputs_embeds=emb))
    close(got.logits, want.logits, f"{arch} inputs_embeds vs transformers")
    close(got.loss, want.loss, f"{arch} inputs_embeds loss vs transformers")
    # the rule itself: which embeddings give the same result as the ids
    same_as_ids = emb if SCALES_INPUTS_EMBEDS[arch] else emb * np.float32(scale)
    close(out(backend, ours, dict(x, inputs_embeds=same_as_ids)).logits,
          out(backend, ours, dict(x, input_ids=ids)).logits, f"{arch} scale rule")
    scaled = out(backend, ours, dict(x, inputs_embeds=emb * np.float32(scale))).logits
    assert np.abs(_numpy(scaled) - _numpy(got.logits)).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_against_hf_gradients(lm, backend, arch):
    """Training-mode gradients of every parameter (dropout 0; the tied `lm_head` summed into
    `embed_tokens`) equal transformers'; the sinusoidal position table (Marian, Pegasus) gets
    none, as the reference's frozen one (`_freeze=True`), the learned one (BART, mBART) does."""
    import torch

    ref, ours, _ = lm(arch, backend.name)
    x = inputs(3)
    ref.train()
    try:
        ref.zero_grad()
        ref(**{k: torch.from_numpy(v) for k, v in x.items()}).loss.backward()
    finally:
        ref.eval()
    want = dict(ref.named_parameters())
    owned = ours.table().owned
    with backend.training(ours):
        got = backend.grads(ours, x, owned)
    for p in owned:
        if backend.frozen(ours, p):  # pt, tf: marked out of training, as the reference's
            assert not want[p.name].requires_grad, p.name
            continue
        g = want[p.name].grad  # None: the frozen table, no gradient (flax: stop_gradient)
        close(got[p.name], np.zeros_like(got[p.name]) if g is None else g,
              f"{arch} {backend.name} grad {p.name}", tol.GRAD)
    assert len(owned) > 30
    table = ours.table().by_name["model.decoder.embed_positions.weight"]
    frozen = arch in ("marian", "pegasus")
    assert (want[table.name].grad is None) == frozen
    assert frozen == (backend.frozen(ours, table) or not got[table.name].any())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_training_dropout_and_layerdrop(lm, adapters, backend, arch):
    """Dropout and LayerDrop act in training only (finite loss, fresh masks per call, a
    gradient); inference is deterministic; LayerDrop 1 skips every layer, as the reference's."""
    _, _, d = lm(arch, backend.name)
    cls = getattr(backend.module, architecture(arch).lm_class)
    model = cls.from_pretrained(d, dropout=0.2, attention_dropout=0.2, activation_dropout=0.2,
                                decoder_layerdrop=0.5)
    x = inputs(4)
    embed = model.table().by_name["model.decoder.embed_tokens.weight"]
    with backend.training(model):
        losses = {float(backend.forward(model, x, **backend.train_kwargs)["loss"])
                  for _ in range(3)}
        grad = backend.grads(model, x, [embed])[embed.name]
    assert len(losses) == 3 and np.isfinite(list(losses)).all()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    a, b = backend.forward(model, x)["logits"], backend.forward(model, x)["logits"]
    np.testing.assert_array_equal(a, b)  # inference: deterministic, every layer runs
    # LayerDrop 1 with no dropout, in training: the embeddings (and the final norm) go straight
    # to the head, as in the reference
    import transformers as tr

    ref = tr.AutoModelForCausalLM.from_pretrained(d, decoder_layerdrop=1.0).train()
    skip = cls.from_pretrained(d, decoder_layerdrop=1.0)
    x = dict(input_ids=x["input_ids"])
    with backend.training(skip):
        got = backend.forward(skip, x, **backend.train_kwargs)["logits"]
    close(got, torch_out(ref, x).logits, f"{arch} {backend.name} layerdrop 1")
    assert np.abs(got - backend.forward(skip, x)["logits"]).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_position_limit(lm, backend, arch):
    """`max_position_embeddings` tokens (past included) work, one more names the limit."""
    _, ours, _ = lm(arch, backend.name)
    n = ours.config.max_position_embeddings
    ids = np.random.default_rng(0).integers(4, 99, (1, n))
    past = out(backend, ours, dict(input_ids=ids[:, :-1]), use_cache=True).past_key_values
    out(backend, ours, dict(input_ids=ids[:, -1:]), past_key_values=past)
    full = out(backend, ours, dict(input_ids=ids), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        out(backend, ours, dict(input_ids=ids[:, -1:]), past_key_values=full)
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        out(backend, ours, dict(input_ids=np.concatenate([ids, ids[:, :1]], 1)))


@pytest.mark.parametrize("backend", PT_FAST)
def test_generate_shapes_for_marian_own_decoder_vocab(adapters, backend, tmp_path):
    """Marian's decoder may have a vocabulary of its own (`decoder_vocab_size`): the embedding,
    head, logits, generation (greedy and beams) and a save/load use it. A BART decoder object
    built without `add_cross_attention` composes too (its layers always have `encoder_attn`)."""
    from encdec.core import BartConfig, BertConfig, MarianConfig

    ad = adapters[backend]
    cls = ad.module.EncoderDecoderModel
    enc = ad.module.BertModel(BertConfig(**tiny_kwargs("bert")))
    x = inputs(7)["input_ids"]
    bart = ad.module.BartForCausalLM(BartConfig(**tiny_kwargs("bart"), pad_token_id=0))
    assert not bart.config.add_cross_attention and not bart.config.is_encoder_decoder
    got = ad.forward(cls(encoder=enc, decoder=bart), dict(input_ids=x, decoder_input_ids=x))
    assert got["logits"].shape == (B, T, 99)

    dec = ad.module.MarianForCausalLM(MarianConfig(**tiny_kwargs("marian"), pad_token_id=0,
                                                   decoder_vocab_size=77, is_decoder=True))
    model = cls(encoder=enc, decoder=dec)
    table = model.table()
    embed = table.by_name["decoder.model.decoder.embed_tokens.weight"]
    assert ad.param(model, embed).shape == (77, H)
    got = ad.forward(model, dict(input_ids=x, decoder_input_ids=x % 77))
    assert got["logits"].shape == (B, T, 77)
    for beams in (1, 2):
        ids = ad.generate(model, x, None, decoder_start_token_id=2, pad_token_id=0,
                          max_new_tokens=4, eos_token_id=None, num_beams=beams)
        assert ids.shape == (B, 5) and int(ids.max()) < 77
    ad.save(model, tmp_path)
    again = ad.load(tmp_path)
    for p in table.owned:
        if p.name.startswith("decoder."):
            np.testing.assert_array_equal(ad.param(again, p), ad.param(model, p), p.name)


def test_bart_cannot_be_an_encoder(backend):
    from encdec.core import BartConfig, BertConfig, EncoderDecoderConfig
    from encdec.core.config import ConfigError

    config = EncoderDecoderConfig.from_encoder_decoder_configs(
        BartConfig(**tiny_kwargs("bart")), BertConfig(**tiny_kwargs("bert")))
    with pytest.raises(ConfigError, match="bart"):
        backend.module.EncoderDecoderModel(config=config)


@pytest.fixture(scope="module")
def bart_seq2seq(tmp_path_factory):
    """(transformers' BartForConditionalGeneration, the directory it saved)."""
    import torch
    import transformers as tr

    torch.manual_seed(0)
    s2s = tr.BartForConditionalGeneration(tr.BartConfig(**tiny_kwargs("bart"), pad_token_id=0))
    with torch.no_grad():
        for n, p in s2s.named_parameters():
            if n.endswith("bias") or "norm" in n.lower():
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("bart-s2s")
    s2s.save_pretrained(d)
    return s2s.eval(), d


@pytest.mark.parametrize("backend", PT_FAST, indirect=True)
def test_backbone_load_from_seq2seq_keeps_the_report(bart_seq2seq, backend):
    """`BartForCausalLM.from_pretrained` of a seq2seq save, and the warm start around a given
    encoder object (the backbone loading path): the alias and the dropped encoder are
    reported, only truly missing weights are initialised (none here)."""
    from encdec.core import BertConfig

    s2s, d = bart_seq2seq
    shared = s2s.get_input_embeddings().weight.detach().numpy()
    lm, report = backend.module.BartForCausalLM.from_pretrained(d, output_loading_info=True)
    assert report.aliased == [("model.decoder.embed_tokens.weight", "model.shared.weight")]
    assert report.missing == [] and any(k.startswith("model.encoder.") for k in report.dropped)
    embed = lm.table().by_name["model.decoder.embed_tokens.weight"]
    np.testing.assert_array_equal(backend.param(lm, embed), shared)
    enc = backend.module.BertModel(BertConfig(**tiny_kwargs("bert")))
    model, info = backend.module.EncoderDecoderModel.from_encoder_decoder_pretrained(
        encoder_model=enc, decoder_pretrained_model_name_or_path=d, output_loading_info=True)
    assert info["decoder"].aliased == report.aliased and info["decoder"].missing == []
    table = model.table().by_name
    np.testing.assert_array_equal(
        backend.param(model, table["decoder.model.decoder.embed_tokens.weight"]), shared)
    np.testing.assert_array_equal(
        backend.param(model, table["decoder.model.decoder.layers.0.encoder_attn.q_proj.weight"]),
        s2s.model.decoder.layers[0].encoder_attn.q_proj.weight.detach().numpy())
