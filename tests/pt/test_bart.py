"""The BART-family decoder in PyTorch (issue 9) against transformers' own `*ForCausalLM` (no
composite): logits, loss, hidden states and attentions with a padded decoder mask, with and
without encoder states; incremental decoding with legacy `past_key_values`; the embedding-scale
rule for caller-given `inputs_embeds`; training mode (dropout, LayerDrop, gradients, the frozen
sinusoidal table); warm start from seq2seq saves (encoder dropped, `model.shared.weight` standing
in for `embed_tokens`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import encdec.pt
from encdec.pt import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import tiny_kwargs

ARCHS = ("bart", "mbart", "marian", "pegasus")
LM_CLASS = {"bart": "BartForCausalLM", "mbart": "MBartForCausalLM",
            "marian": "MarianForCausalLM", "pegasus": "PegasusForCausalLM"}
# the reference's rule: Marian and Pegasus scale after the lookup (so caller-given inputs_embeds
# too); BART and mBART scale inside their scaled word embedding (so not inputs_embeds)
SCALES_INPUTS_EMBEDS = {"bart": False, "mbart": False, "marian": True, "pegasus": True}
B, T, S, H = 3, 7, 5, 32


def _noisy(model) -> None:
    """Random LayerNorm / bias values, so a wrong leaf mapping cannot hide behind 1s and 0s."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n.lower():
                p.add_(0.1 * torch.randn_like(p))


def reference_lm(arch: str, seed: int = 0, **kwargs):
    """transformers' `*ForCausalLM` of a tiny `arch` config (eager attention, eval mode)."""
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
            ours = getattr(encdec.pt, LM_CLASS[arch]).from_pretrained(d)
            assert type(ours).__name__ == LM_CLASS[arch]
            cache[key] = ref, ours
        return cache[key]

    return make


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Decoder ids with a padded mask (and padded labels), encoder states with a padded mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -2:] = 0
    mask[2, -1:] = 0
    labels = torch.randint(4, 99, (B, T), generator=g)
    labels[mask == 0] = -100
    enc_mask = torch.ones(B, S, dtype=torch.long)
    enc_mask[0, -2:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                encoder_hidden_states=torch.randn(B, S, H, generator=g),
                encoder_attention_mask=enc_mask)


def close(a, b, what: str, atol: float = tol.FORWARD) -> None:
    def np_(x):
        return tuple(np_(y) for y in x) if isinstance(x, (tuple, list)) else x.detach().numpy()

    tol.assert_close(np_(a), np_(b), atol, what)


@pytest.mark.parametrize("cross", [True, False], ids=["cross", "no-encoder"])
@pytest.mark.parametrize("arch", ARCHS)
def test_against_hf_causal_lm(pair, arch, cross):
    ref, ours = pair(arch)
    x = inputs()
    if not cross:
        del x["encoder_hidden_states"], x["encoder_attention_mask"]
    kw = dict(output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        want, got = ref(**x, **kw), ours(**x, **kw)
    for key in ("logits", "loss", "hidden_states", "attentions"):
        close(got[key], want[key], f"{arch} {key}")
    assert len(got.hidden_states) == ours.config.decoder_layers + 1
    if cross:
        close(got.cross_attentions, want.cross_attentions, f"{arch} cross_attentions")
    else:
        assert got.cross_attentions is None and all(len(p) == 2 for p in got.past_key_values)


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_decoding_with_legacy_past(pair, arch):
    """Token by token, and a 4-token prefix then the rest, with legacy past_key_values, equal
    the full forward (itself the reference's, above)."""
    _, ours = pair(arch)
    x = inputs(1)
    del x["labels"]
    ids, mask = x.pop("input_ids"), x.pop("attention_mask")
    with torch.no_grad():
        full = ours(ids, mask, **x).logits
        for chunks in ([(t, t + 1) for t in range(T)], [(0, 4), (4, T)]):
            past, steps = None, []
            for a, b in chunks:
                out = ours(ids[:, a:b], mask[:, :b], past_key_values=past, use_cache=True, **x)
                past = out.past_key_values
                assert all(len(p) == 4 and p[0].shape[2] == b for p in past)
                steps.append(out.logits)
            close(torch.cat(steps, 1), full, f"{arch} {chunks}", tol.CACHE)


@pytest.mark.parametrize("arch", ARCHS)
def test_inputs_embeds_scaling_rule(pair, arch):
    ref, ours = pair(arch)
    x = inputs(2)
    ids = x.pop("input_ids")
    emb = ours.get_input_embeddings()(ids)  # the unscaled lookup
    scale = ours.config.embed_scale
    assert scale == H ** 0.5
    with torch.no_grad():
        got, want = ours(inputs_embeds=emb, **x), ref(inputs_embeds=emb, **x)
        close(got.logits, want.logits, f"{arch} inputs_embeds vs transformers")
        close(got.loss, want.loss, f"{arch} inputs_embeds loss vs transformers")
        # the rule itself: which embeddings give the same result as the ids
        same_as_ids = emb if SCALES_INPUTS_EMBEDS[arch] else emb * scale
        close(ours(inputs_embeds=same_as_ids, **x).logits, ours(ids, **x).logits,
              f"{arch} scale rule")
        assert (ours(inputs_embeds=emb * scale, **x).logits
                - ours(inputs_embeds=emb, **x).logits).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_against_hf_gradients(pair, arch):
    """Training-mode gradients (dropout 0) equal transformers'; the sinusoidal position table
    (Marian, Pegasus) is frozen as the reference's class builds it (`_freeze=True`; transformers
    5's `from_pretrained` loses the flag and trains it), the learned one (BART, mBART) is not."""
    ref, ours = pair(arch, dropout=0.0)
    x = inputs(3)
    ref.train(), ours.train()
    try:
        ref.zero_grad(), ours.zero_grad()
        ref(**x).loss.backward()
        ours(**x).loss.backward()
        want = dict(ref.named_parameters())
        n = 0
        for name, p in ours.named_parameters():
            if want[name].grad is None:
                assert p.grad is None and not p.requires_grad, name
                continue
            close(p.grad, want[name].grad, f"{arch} grad {name}", tol.GRAD)
            n += 1
        assert n > 30
        frozen = not ours.model.decoder.embed_positions.weight.requires_grad
        assert frozen == (arch in ("marian", "pegasus"))
    finally:
        ref.eval(), ours.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_training_dropout_and_layerdrop(arch):
    """Dropout and LayerDrop act in training only; LayerDrop 1 skips every layer."""
    config = dict(tiny_kwargs(arch), pad_token_id=0, dropout=0.2, attention_dropout=0.2,
                  activation_dropout=0.2, decoder_layerdrop=0.5)
    config_class = getattr(encdec.pt, LM_CLASS[arch]).config_class
    torch.manual_seed(0)
    model = getattr(encdec.pt, LM_CLASS[arch])(config_class(**config))
    x = inputs(4)
    model.train()
    losses = set()
    for seed in range(4):
        torch.manual_seed(seed)
        model.zero_grad()
        loss = model(**x).loss
        loss.backward()
        assert torch.isfinite(loss)
        losses.add(loss.item())
        assert model.lm_head.weight.grad.abs().max() > 0
    assert len(losses) == 4  # dropout and layerdrop draw differently each time
    model.eval()
    with torch.no_grad():
        a, b = model(**x).logits, model(**x).logits
    assert torch.equal(a, b)  # eval: deterministic, every layer runs
    # LayerDrop 1 with no dropout: the layers are skipped, the embeddings (and the final norm)
    # go straight to the head
    dec = model.model.decoder
    dec.layerdrop = 1.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    with torch.no_grad():
        out = model(x["input_ids"], output_hidden_states=True)
        direct = model.logits(dec._final(dec.embed(x["input_ids"], None, None, 0)))
    model.eval()
    close(out.logits, direct, f"{arch} layerdrop 1")
    assert len(out.hidden_states) == 1


@pytest.mark.parametrize("seq2seq", ["BartForConditionalGeneration", "MBartModel",
                                     "MarianMTModel", "PegasusForConditionalGeneration"])
def test_warm_start_from_seq2seq(seq2seq, tmp_path):
    """The decoder of a seq2seq save, with its pretrained cross-attention: encoder keys dropped
    and reported, `model.shared.weight` stands in for `embed_tokens` (and the tied `lm_head`),
    reported; logits equal transformers' warm start once its embeddings are set the same (the
    reference leaves them random: its loader does not find the shared matrix)."""
    import transformers as tr

    arch = getattr(tr, seq2seq).config_class.model_type
    torch.manual_seed(0)
    enc = tr.BertModel(tr.BertConfig(**tiny_kwargs("bert")))
    enc.save_pretrained(tmp_path / "enc")
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
    base = s2s.get_decoder() if hasattr(s2s, "get_decoder") else s2s.model.decoder
    for name, p in dec.named_parameters():
        assert torch.equal(p, base.get_parameter(name)), name
    assert model.decoder.lm_head.weight is dec.embed_tokens.weight
    assert torch.equal(dec.embed_tokens.weight, s2s.get_input_embeddings().weight)

    ref = tr.EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path / "enc",
                                                                 tmp_path / "dec").eval()
    with torch.no_grad():
        ref.decoder.model.decoder.embed_tokens.weight.copy_(s2s.get_input_embeddings().weight)
    x = inputs(5)
    batch = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                 decoder_input_ids=x["input_ids"].flip(1), labels=x["labels"])
    with torch.no_grad():
        close(model(**batch).logits, ref(**batch).logits, f"{seq2seq} warm start")


def test_decoder_object_needs_no_add_cross_attention():
    """The BART decoder always has `encoder_attn`: a decoder object built without
    `add_cross_attention` composes (the reference's BartForCausalLM does too)."""
    enc = encdec.pt.BertModel(encdec.core.BertConfig(**tiny_kwargs("bert")))
    dec = encdec.pt.BartForCausalLM(encdec.core.BartConfig(**tiny_kwargs("bart"),
                                                           pad_token_id=0))
    assert not dec.config.add_cross_attention and not dec.config.is_encoder_decoder
    model = EncoderDecoderModel(encoder=enc, decoder=dec).eval()
    x = inputs(6)
    with torch.no_grad():
        out = model(input_ids=x["input_ids"], decoder_input_ids=x["input_ids"])
    assert out.logits.shape == (B, T, 99)


@pytest.mark.parametrize("arch", ARCHS)
def test_position_limit(pair, arch):
    """`max_position_embeddings` tokens (past included) work, one more names the limit."""
    _, ours = pair(arch)
    n = ours.config.max_position_embeddings
    ids = torch.randint(4, 99, (1, n))
    with torch.no_grad():
        past = ours(ids[:, :-1], use_cache=True).past_key_values
        ours(ids[:, -1:], past_key_values=past)
        with pytest.raises(ValueError, match=rf"\b{n}\b"):
            ours(ids[:, -1:], past_key_values=ours(ids, use_cache=True).past_key_values)
        with pytest.raises(ValueError, match=rf"\b{n}\b"):
            ours(torch.cat([ids, ids[:, :1]], 1))


def test_generate_shapes_for_marian_own_decoder_vocab(tmp_path):
    """Marian's decoder may have a vocabulary of its own (`decoder_vocab_size`): the embedding,
    head, logits and generation use it."""
    enc = encdec.pt.BertModel(encdec.core.BertConfig(**tiny_kwargs("bert")))
    dec_config = encdec.core.MarianConfig(**tiny_kwargs("marian"), decoder_vocab_size=77,
                                          pad_token_id=0, is_decoder=True)
    dec = encdec.pt.MarianForCausalLM(dec_config)
    assert dec.lm_head.weight.shape == (77, H) and dec.get_input_embeddings().num_embeddings == 77
    model = EncoderDecoderModel(encoder=enc, decoder=dec).eval()
    x = inputs(7)
    with torch.no_grad():
        assert model(input_ids=x["input_ids"], decoder_input_ids=x["input_ids"] % 77
                     ).logits.shape == (B, T, 77)
    out = model.generate(x["input_ids"], decoder_start_token_id=2, pad_token_id=0,
                         max_new_tokens=4, eos_token_id=None, num_beams=2)
    assert out.shape == (B, 5) and int(out.max()) < 77
    model.save_pretrained(tmp_path)
    again = EncoderDecoderModel.from_pretrained(tmp_path)
    assert np.array_equal(again.decoder.lm_head.weight.detach().numpy(),
                          dec.lm_head.weight.detach().numpy())
