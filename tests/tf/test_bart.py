"""The BART-family decoder in Keras (issue 9) against transformers' own `*ForCausalLM` (no
composite): logits, loss, hidden states and attentions with a padded decoder mask, with and
without encoder states; incremental decoding with legacy `past_key_values`; the embedding-scale
rule for caller-given `inputs_embeds`; training (gradients vs the reference, the frozen
sinusoidal table, dropout and LayerDrop), under `tf.function(jit_compile=True)` and `fit`;
warm start from seq2seq saves (encoder dropped, `model.shared.weight` standing in for
`embed_tokens`); Marian's own decoder vocabulary."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import encdec.tf
from encdec.core import BartConfig, BertConfig, MarianConfig
from encdec.core.weights import Dialect, from_dialect, leaf
from encdec.tf import EncoderDecoderModel, params
from tests import tolerances as tol
from tests.conftest import make_batch, tiny_kwargs

ARCHS = ("bart", "mbart", "marian", "pegasus")
LM_CLASS = {"bart": "BartForCausalLM", "mbart": "MBartForCausalLM",
            "marian": "MarianForCausalLM", "pegasus": "PegasusForCausalLM"}
# the reference's rule: Marian and Pegasus scale after the lookup (so caller-given inputs_embeds
# too); BART and mBART scale inside their scaled word embedding (so not inputs_embeds)
SCALES_INPUTS_EMBEDS = {"bart": False, "mbart": False, "marian": True, "pegasus": True}
B, T, S, H = 3, 7, 5, 32


def _noisy(model) -> None:
    """Random LayerNorm / bias values, so a wrong leaf mapping cannot hide behind 1s and 0s."""
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower():
                p.add_(0.1 * torch.randn_like(p))


def reference_lm(arch: str, seed: int = 0, **kwargs):
    """transformers' `*ForCausalLM` of a tiny `arch` config (eager attention, eval mode)."""
    import torch
    import transformers as tr

    config = tr.AutoConfig.for_model(arch, **{**tiny_kwargs(arch), "scale_embedding": True,
                                              "pad_token_id": 0, **kwargs}, is_decoder=True)
    torch.manual_seed(seed)
    model = tr.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert type(model).__name__ == LM_CLASS[arch]
    _noisy(model)
    return model.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """`pair(arch, **config)` -> (transformers' LM, ours loaded from its save)."""
    cache = {}

    def make(arch: str, **kwargs):
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            ref = reference_lm(arch, **kwargs)
            d = tmp_path_factory.mktemp(arch)
            ref.save_pretrained(d)
            ours = getattr(encdec.tf, LM_CLASS[arch]).from_pretrained(d)
            assert type(ours).__name__ == LM_CLASS[arch]
            cache[key] = ref, ours
        return cache[key]

    return make


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


def torch_(x: dict) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in x.items()}


def tf_(x: dict) -> dict:
    return {k: tf.constant(v) for k, v in x.items()}


def np_(x):
    if isinstance(x, (tuple, list)):
        return tuple(np_(y) for y in x)
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def close(a, b, what: str, atol: float = tol.FORWARD) -> None:
    tol.assert_close(np_(a), np_(b), atol, what)


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "no-encoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_against_hf_causal_lm(pair, arch, cross):
    import torch

    ref, ours = pair(arch)
    x = inputs()
    if not cross:
        del x["encoder_hidden_states"], x["encoder_attention_mask"]
    kw = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        want = ref(**torch_(x), **kw)
    got = ours(**tf_(x), **kw)
    for key in ("logits", "loss", "hidden_states", "attentions"):
        close(got[key], want[key], f"{arch} {key}")
    assert len(got.hidden_states) == ours.config.decoder_layers + 1
    if cross:
        close(got.cross_attentions, want.cross_attentions, f"{arch} cross_attentions")
    else:
        assert got.cross_attentions is None and all(len(p) == 2 for p in got.past_key_values)


def test_against_hf_untied_head(pair):
    """tie_word_embeddings=False: `lm_head` is a matrix of its own (saved, loaded, used)."""
    import torch

    ref, ours = pair("marian", tie_word_embeddings=False)
    assert ours.lm_head is not None
    assert not np.array_equal(ours.lm_head.kernel.numpy().T,
                              ours.get_input_embeddings().embeddings.numpy())
    x = inputs(8)
    with torch.no_grad():
        want = ref(**torch_(x))
    got = ours(**tf_(x))
    close(got.logits, want.logits, "untied logits")
    close(got.loss, want.loss, "untied loss")


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decoding_with_legacy_past(pair, arch):
    """Token by token, and a 4-token prefix then the rest, with legacy past_key_values, equal
    the full forward (itself the reference's, above)."""
    _, ours = pair(arch)
    x = tf_(inputs(1))
    del x["labels"]
    ids, mask = x.pop("input_ids"), x.pop("attention_mask")
    full = ours(ids, mask, **x).logits
    for chunks in ([(t, t + 1) for t in range(T)], [(0, 4), (4, T)]):
        past, steps = None, []
        for a, b in chunks:
            out = ours(ids[:, a:b], mask[:, :b], past_key_values=past, use_cache=True, **x)
            past = out.past_key_values
            assert all(len(p) == 4 and p[0].shape[2] == b for p in past)
            steps.append(out.logits)
        close(tf.concat(steps, 1), full, f"{arch} {chunks}", tol.CACHE)


@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_embeds_scaling_rule(pair, arch):
    import torch

    ref, ours = pair(arch)
    x = inputs(2)
    ids = x.pop("input_ids")
    emb = ours.get_input_embeddings()(tf.constant(ids))  # the unscaled lookup
    scale = ours.config.embed_scale
    assert scale == H ** 0.5
    got = ours(inputs_embeds=emb, **tf_(x))
    with torch.no_grad():
        want = ref(inputs_embeds=torch.from_numpy(emb.numpy()), **torch_(x))
    close(got.logits, want.logits, f"{arch} inputs_embeds vs transformers")
    close(got.loss, want.loss, f"{arch} inputs_embeds loss vs transformers")
    # the rule itself: which embeddings give the same result as the ids
    same_as_ids = emb if SCALES_INPUTS_EMBEDS[arch] else emb * scale
    close(ours(inputs_embeds=same_as_ids, **tf_(x)).logits, ours(ids, **tf_(x)).logits,
          f"{arch} scale rule")
    assert np.abs(ours(inputs_embeds=emb * scale, **tf_(x)).logits.numpy()
                  - got.logits.numpy()).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_against_hf_gradients(pair, arch):
    """Training-mode gradients (dropout 0) equal transformers'; the sinusoidal position table
    (Marian, Pegasus) is non-trainable, as the reference's frozen one, the learned one is not."""
    ref, ours = pair(arch, dropout=0.0)
    x = inputs(3)
    ref.train()
    try:
        ref.zero_grad()
        ref(**torch_(x)).loss.backward()
    finally:
        ref.eval()
    want = dict(ref.named_parameters())
    found = params.variables(ours)
    owned = [p for p in ours.table().owned if found[leaf(p, Dialect.KERAS)].trainable]
    with tf.GradientTape() as tape:
        loss = ours(**tf_(x), training=True).loss
    grads = tape.gradient(loss, [found[leaf(p, Dialect.KERAS)] for p in owned])
    for p, g in zip(owned, grads, strict=True):
        got = from_dialect(p, tf.convert_to_tensor(g).numpy(), Dialect.KERAS)
        close(got, want[p.name].grad, f"{arch} grad {p.name}", tol.GRAD)
    assert len(owned) > 30
    frozen = not found["model.decoder.embed_positions.embeddings"].trainable
    assert frozen == (arch in ("marian", "pegasus")) == (
        want["model.decoder.embed_positions.weight"].grad is None)
    # what an optimizer trains: the reference's trainable parameters (a tied head once)
    assert len(ours.trainable_variables) == sum(p.requires_grad for p in want.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_training_dropout_and_layerdrop(arch):
    """Dropout and LayerDrop act in training only (eager and under XLA); LayerDrop 1 skips
    every layer."""
    config_class = getattr(encdec.tf, LM_CLASS[arch]).config_class
    config = config_class(**tiny_kwargs(arch), pad_token_id=0, dropout=0.2,
                          attention_dropout=0.2, activation_dropout=0.2, decoder_layerdrop=0.5)
    keras.utils.set_random_seed(0)
    model = getattr(encdec.tf, LM_CLASS[arch])(config)
    x = tf_(inputs(4))

    def loss_and_grad():
        with tf.GradientTape() as tape:
            loss = model(**x, training=True).loss
        return loss, tape.gradient(loss, model.get_input_embeddings().embeddings)

    compiled = tf.function(loss_and_grad, jit_compile=True)
    losses = set()
    for run in (loss_and_grad, compiled):
        for _ in range(3):
            loss, grad = run()
            assert np.isfinite(float(loss))
            assert np.abs(tf.convert_to_tensor(grad).numpy()).max() > 0
            losses.add(float(loss))
    assert len(losses) == 6  # dropout and layerdrop draw differently each time
    a, b = model(**x).logits, model(**x).logits
    assert np.array_equal(a.numpy(), b.numpy())  # inference: deterministic, every layer runs
    # LayerDrop 1 with no dropout: the layers are skipped, the embeddings (and the final norm)
    # go straight to the head
    dec = model.model.decoder
    config.decoder_layerdrop, dec.dropout.rate = 1.0, 0.0
    out = model(x["input_ids"], training=True).logits
    direct = dec.embed(x["input_ids"], None, None, 0)
    if dec.layer_norm is not None:
        direct = dec.layer_norm(direct)
    close(out, model.logits(direct), f"{arch} layerdrop 1")


def test_forward_under_xla(pair):
    """The causal LM (padded masks, encoder states, labels) under tf.function(jit_compile=True)
    equals eager."""
    _, ours = pair("mbart")
    x = tf_(inputs(5))
    eager = ours(**x)

    @tf.function(jit_compile=True)
    def forward(x):
        out = ours(**x)
        return out.loss, out.logits

    loss, logits = forward(x)
    close(loss, eager.loss, "xla loss")
    close(logits, eager.logits, "xla logits")


@pytest.mark.filterwarnings("ignore:Gradients do not exist:UserWarning")  # the BERT pooler
@pytest.mark.parametrize("name", ["bert2bart", "bert2pegasus"])
def test_fit_lowers_the_loss(reference_dir, name):
    """compile(optimizer=Adam) with no loss + fit on dicts with labels, LayerDrop on; the
    sinusoidal table (Pegasus) stays as it was."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    model.config.decoder.decoder_layerdrop = 0.3
    b = make_batch()
    data = {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
    before = float(model(**data).loss)
    positions = params.variables(model)["decoder.model.decoder.embed_positions.embeddings"]
    table = positions.numpy()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3))
    ds = tf.data.Dataset.from_tensor_slices(data).batch(3).repeat(8)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    after = float(model(**data).loss)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.1, (before, after)
    assert np.array_equal(positions.numpy(), table) == (name == "bert2pegasus")


@pytest.mark.parametrize("seq2seq", ["BartForConditionalGeneration", "MBartModel",
                                     "MarianMTModel", "PegasusForConditionalGeneration"])
def test_warm_start_from_seq2seq(seq2seq, tmp_path):
    """The decoder of a seq2seq save, with its pretrained cross-attention: encoder keys dropped
    and reported, `model.shared.weight` stands in for `embed_tokens` (and the tied `lm_head`),
    reported; logits equal transformers' warm start once its embeddings are set the same (the
    reference leaves them random: its loader does not find the shared matrix)."""
    import torch
    import transformers as tr

    arch = getattr(tr, seq2seq).config_class.model_type
    torch.manual_seed(0)
    tr.BertModel(tr.BertConfig(**tiny_kwargs("bert"))).save_pretrained(tmp_path / "enc")
    s2s = getattr(tr, seq2seq)(tr.AutoConfig.for_model(arch, **tiny_kwargs(arch), pad_token_id=0))
    _noisy(s2s)
    s2s.save_pretrained(tmp_path / "dec")
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        tmp_path / "enc", tmp_path / "dec", output_loading_info=True)
    report = info["decoder"]
    assert report.aliased == [("model.decoder.embed_tokens.weight",
                               next(k for k in ("model.shared.weight", "shared.weight")
                                    if k in s2s.state_dict()))]
    assert any(k.startswith(("model.encoder.", "encoder.")) for k in report.dropped)
    # Marian's sinusoidal table is not in its save: initialised (to the same fixed table)
    assert report.missing == (["model.decoder.embed_positions.weight"] if arch == "marian"
                              else [])
    dec = model.decoder.model.decoder
    base = dict((s2s.get_decoder() if hasattr(s2s, "get_decoder") else s2s.model.decoder)
                .named_parameters())
    table = dec.table()
    found = params.variables(dec)
    for p in table.params:
        got = from_dialect(p, found[leaf(p, Dialect.KERAS)].numpy(), Dialect.KERAS)
        assert np.array_equal(got, base[p.name].detach().numpy()), p.name
    assert model.decoder.lm_head is None  # tied: the head reads embed_tokens
    assert np.array_equal(dec.embed_tokens.embeddings.numpy(),
                          s2s.get_input_embeddings().weight.detach().numpy())

    ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc",
                                                                 tmp_path / "dec").eval()
    with torch.no_grad():
        ref.decoder.model.decoder.embed_tokens.weight.copy_(s2s.get_input_embeddings().weight)
    x = inputs(5)
    batch = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                 decoder_input_ids=x["input_ids"][:, ::-1].copy(), labels=x["labels"])
    with torch.no_grad():
        want = ref(**torch_(batch)).logits
    close(model(**tf_(batch)).logits, want, f"{seq2seq} warm start")


def test_backbone_load_from_seq2seq_keeps_the_report(tmp_path):
    """`BartForCausalLM.from_pretrained` of a seq2seq save, and the warm start around a given
    encoder object (the backbone loading path): the alias and the dropped encoder are
    reported, only truly missing weights are initialised (none here)."""
    import torch
    import transformers as tr

    torch.manual_seed(0)
    s2s = tr.BartForConditionalGeneration(tr.BartConfig(**tiny_kwargs("bart"), pad_token_id=0))
    _noisy(s2s)
    s2s.save_pretrained(tmp_path)
    shared = s2s.get_input_embeddings().weight.detach().numpy()
    lm, report = encdec.tf.BartForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert report.aliased == [("model.decoder.embed_tokens.weight", "model.shared.weight")]
    assert report.missing == [] and any(k.startswith("model.encoder.") for k in report.dropped)
    assert np.array_equal(lm.get_input_embeddings().embeddings.numpy(), shared)
    enc = encdec.tf.BertModel(BertConfig(**tiny_kwargs("bert")))
    model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
        encoder_model=enc, decoder_pretrained_model_name_or_path=tmp_path,
        output_loading_info=True)
    assert info["decoder"].aliased == report.aliased and info["decoder"].missing == []
    dec = model.decoder.model.decoder
    assert np.array_equal(dec.embed_tokens.embeddings.numpy(), shared)
    want = s2s.model.decoder.layers[0].encoder_attn.q_proj.weight.detach().numpy()
    assert np.array_equal(dec.layers[0].encoder_attn.q_proj.kernel.numpy().T, want)


def test_decoder_object_needs_no_add_cross_attention():
    """The BART decoder always has `encoder_attn`: a decoder object built without
    `add_cross_attention` composes (the reference's BartForCausalLM does too)."""
    enc = encdec.tf.BertModel(BertConfig(**tiny_kwargs("bert")))
    dec = encdec.tf.BartForCausalLM(BartConfig(**tiny_kwargs("bart"), pad_token_id=0))
    assert not dec.config.add_cross_attention and not dec.config.is_encoder_decoder
    model = EncoderDecoderModel(encoder=enc, decoder=dec)
    x = tf.constant(inputs(6)["input_ids"])
    out = model(input_ids=x, decoder_input_ids=x)
    assert out.logits.shape == (B, T, 99)


@pytest.mark.parametrize("arch", ARCHS)
def test_position_limit(pair, arch):
    """`max_position_embeddings` tokens (past included) work, one more names the limit."""
    _, ours = pair(arch)
    n = ours.config.max_position_embeddings
    ids = tf.constant(np.random.default_rng(0).integers(4, 99, (1, n)))
    past = ours(ids[:, :-1], use_cache=True).past_key_values
    ours(ids[:, -1:], past_key_values=past)
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        ours(ids[:, -1:], past_key_values=ours(ids, use_cache=True).past_key_values)
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        ours(tf.concat([ids, ids[:, :1]], 1))


def test_generate_shapes_for_marian_own_decoder_vocab(tmp_path):
    """Marian's decoder may have a vocabulary of its own (`decoder_vocab_size`): the embedding,
    head, logits and generation use it."""
    enc = encdec.tf.BertModel(BertConfig(**tiny_kwargs("bert")))
    dec_config = MarianConfig(**tiny_kwargs("marian"), decoder_vocab_size=77, pad_token_id=0,
                              is_decoder=True)
    dec = encdec.tf.MarianForCausalLM(dec_config)
    assert tuple(dec.get_input_embeddings().embeddings.shape) == (77, H)
    model = EncoderDecoderModel(encoder=enc, decoder=dec)
    x = tf.constant(inputs(7)["input_ids"])
    assert model(input_ids=x, decoder_input_ids=x % 77).logits.shape == (B, T, 77)
    for beams in (1, 2):
        out = np.asarray(model.generate(x, decoder_start_token_id=2, pad_token_id=0,
                                        max_new_tokens=4, eos_token_id=None, num_beams=beams))
        assert out.shape == (B, 5) and int(out.max()) < 77
    model.save_pretrained(tmp_path)
    again = EncoderDecoderModel.from_pretrained(tmp_path)
    assert np.array_equal(again.decoder.get_input_embeddings().embeddings.numpy(),
                          dec.get_input_embeddings().embeddings.numpy())
