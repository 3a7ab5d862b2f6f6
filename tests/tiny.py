"""The test matrix as data: each architecture's tiny config and the composite pairs the harness
runs, derived from the registry (`encdec.core.registry.ARCHITECTURES`).

A new member of a family needs nothing here: its family's tiny sizes apply, and `PAIRS` gains a
pair that uses it (`{name}2{name}`, `{name}2bert` for an encoder only, `bert2{name}` for a
decoder only) unless a named pair below already does. A member with a variation of its own
(ELECTRA's narrower embeddings, a BART member's activation) adds one `EXTRA` line. A new family
adds one `FAMILY_SIZES` line. The fast subset (`pytest -m "not slow"`) runs pair-parametrised
tests on `FAST_PAIRS` only; every other pair is in the full suite. Also read by
tools/fixtures/make_reference_fixtures.py, so the reference's TF/Flax fixtures are made from
the same sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from encdec.core.registry import ARCHITECTURES, architecture

# Tiny sizes, as the reference's testers: hidden 32, 2 layers, 4 heads, vocab 99.
TINY = dict(vocab_size=99, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_act="gelu")
FAMILY_SIZES = {  # the registry's family -> its config's names for the tiny sizes
    "bert": lambda h: dict(TINY, hidden_size=h),
    "distilbert": lambda h: dict(vocab_size=99, dim=h, n_layers=2, n_heads=4, hidden_dim=37,
                                 max_position_embeddings=64, activation="gelu"),
    "gpt2": lambda h: dict(vocab_size=99, n_embd=h, n_layer=2, n_head=4, n_positions=64),
    "bart": lambda h: dict(vocab_size=99, d_model=h, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4,
                           encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                           activation_function="gelu"),
}
EXTRA = {  # ELECTRA's embeddings narrower than hidden; each BART member's own activation
    "electra": dict(embedding_size=16),
    "marian": dict(activation_function="swish", scale_embedding=True, decoder_start_token_id=2),
    "pegasus": dict(activation_function="relu", scale_embedding=True),
    "mbart": dict(scale_embedding=True),
}
DECODER_START, PAD, EOS = 2, 0, 3


def tiny_kwargs(model_type: str, hidden: int = 32) -> dict:
    """transformers config kwargs of a tiny model of `model_type` (a registry name)."""
    return dict(FAMILY_SIZES[architecture(model_type).family](hidden), **EXTRA.get(model_type, {}))


@dataclass(frozen=True)
class Pair:
    """One composite of the test matrix: encoder and decoder model types (registry names)."""

    encoder: str
    decoder: str
    decoder_hidden: int = 32  # != 32: an `enc_to_dec_proj`
    tie: bool = False  # tie_encoder_decoder

    def kwargs(self, side: str) -> dict:
        """The transformers config kwargs of one side ("encoder" / "decoder")."""
        return tiny_kwargs(getattr(self, side), 32 if side == "encoder" else self.decoder_hidden)

    def pad(self, side: str) -> int:
        """The side's padding id: transformers' config default (RoBERTa's 1), else PAD (also
        for a default outside the tiny vocabulary, Marian's 58100)."""
        import transformers as tr  # the oracle: only when a test asks

        kwargs = self.kwargs(side)
        pad = tr.AutoConfig.for_model(getattr(self, side), **kwargs).pad_token_id
        return PAD if pad is None or pad >= kwargs["vocab_size"] else pad


# Named pairs: the variations that need a pair of their own (a projection between different
# widths, tied encoder-decoder weights, mixed families).
NAMED_PAIRS: dict[str, Pair] = {
    "bert2bert": Pair("bert", "bert"),
    "bert2gpt2": Pair("bert", "gpt2"),
    "bert2bert_proj": Pair("bert", "bert", decoder_hidden=24),
    "bert2gpt2_proj": Pair("bert", "gpt2", decoder_hidden=24),
    "roberta2roberta": Pair("roberta", "roberta"),
    "roberta2roberta_tied": Pair("roberta", "roberta", tie=True),
    "bertgeneration2bertgeneration": Pair("bert-generation", "bert-generation"),
    "distilbert2bert": Pair("distilbert", "bert"),
    "distilbert2gpt2": Pair("distilbert", "gpt2"),
    "roberta2gpt2": Pair("roberta", "gpt2"),
    "bert2roberta": Pair("bert", "roberta"),
    "electra2bert": Pair("electra", "bert"),
    "bert2bart": Pair("bert", "bart"),
    "bert2bart_proj": Pair("bert", "bart", decoder_hidden=48),
    "roberta2mbart": Pair("roberta", "mbart"),
}


def _derived_pairs() -> dict[str, Pair]:
    """A pair for every architecture in the role(s) it can take that no named pair covers:
    itself on both sides, or with BERT on the other side. (GPT-2 as the encoder: not a
    pairing people train.)"""
    pairs: dict[str, Pair] = {}
    plain = [p for p in NAMED_PAIRS.values() if p.decoder_hidden == 32 and not p.tie]
    for arch in ARCHITECTURES:
        name = arch.name
        encodes = arch.can_encode and arch.family != "gpt2"
        if not ((encodes and name not in {p.encoder for p in plain})
                or (arch.can_decode and name not in {p.decoder for p in plain})):
            continue
        encoder = name if encodes else "bert"
        decoder = name if arch.can_decode else "bert"
        pairs[f"{encoder}2{decoder}"] = Pair(encoder, decoder)
    return pairs


PAIRS: dict[str, Pair] = {**NAMED_PAIRS, **_derived_pairs()}
# The fast subset runs every pair-parametrised test on these pairs only: one per decoder
# family (BERT, GPT-2, BART). CI runs every pair.
FAST_PAIRS = frozenset({"bert2bert", "bert2gpt2", "bert2bart"})
# ... and tests parametrised over the BART family's members run on `bart` alone.
SLOW_PARAMS = frozenset(PAIRS) - FAST_PAIRS | {"mbart", "marian", "pegasus"}
