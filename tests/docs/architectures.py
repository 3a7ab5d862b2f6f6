"""Renders docs/architectures.md from the registry (`encdec.core.registry.ARCHITECTURES`) and
each backend's `FAMILIES`; tests/docs/test_architectures_page.py checks the committed page.

Write the page with: python -m tests.docs.architectures > docs/architectures.md
"""

from __future__ import annotations

import importlib

from encdec.core.registry import ARCHITECTURES, Architecture, max_positions

BACKENDS = ("pt", "tf", "flax")

HEADER = """\
# Supported architectures

An encoder-decoder joins any supported **encoder** with any supported **decoder**, in every
backend. Each architecture is declared once, in `encdec/core/registry.py`; this page is
generated from it (`python -m tests.docs.architectures > docs/architectures.md`) and a test
checks that it is up to date.

Every backend exports the reference's class names (`encdec.pt.RobertaModel`,
`encdec.tf.ElectraForCausalLM`, `encdec.flax.BertGenerationDecoder`, …): the encoder is the
architecture's base model, the decoder its causal LM with cross-attention added
(`is_decoder=True, add_cross_attention=True`, set for you by
`from_encoder_decoder_pretrained` and `from_encoder_decoder_configs`).
"""

FOOTER = """\
## Notes

- **Different hidden sizes**: when the encoder's and the decoder's hidden sizes differ, the
  model has an `enc_to_dec_proj` Linear, as the reference.
- **RoBERTa, XLM-RoBERTa, CamemBERT**: positions start at `pad_token_id + 1` and padding keeps
  position `pad_token_id`, as in transformers' `create_position_ids_from_input_ids`; a
  sequence therefore holds at most `max_position_embeddings - pad_token_id - 1` tokens (514 -
  2 = 512 for `roberta-base`). One more is a `ValueError` naming the limit, in the forward and
  in `generate`. Pad the inputs with the model's own `pad_token_id` (1), not 0.
- **ELECTRA**: the embeddings are `embedding_size` wide and projected to `hidden_size` by
  `embeddings_project` when the two differ; the causal LM head projects back to
  `embedding_size` before the vocabulary (`generator_predictions`, `generator_lm_head`).
  Warm-starting from an `ElectraForPreTraining` (discriminator) checkpoint initialises the
  decoder's generator head newly, and lists it.
- **BertGeneration**: no token-type embeddings and no pooler; its decoder's LM head is
  `lm_head.decoder` without a transform.
- **DistilBERT** is an encoder only: the reference has no DistilBERT causal LM, and asking for
  one as the decoder is an error that says so.
- **BART, mBART, Marian, Pegasus** are decoders only: the decoder of the reference's
  `*ForCausalLM` (`model.decoder.…` + an `lm_head` tied to `embed_tokens`), with its
  `self_attn`, pretrained `encoder_attn` and `fc1` / `fc2`. They warm-start from the
  checkpoints people publish — `BartForConditionalGeneration`, `MBartForConditionalGeneration`,
  `MarianMTModel`, `PegasusForConditionalGeneration`, `BartModel`, `*ForCausalLM` — keeping the
  pretrained cross-attention; the encoder's weights are dropped and listed. Such a seq2seq save
  stores the embedding once, as `model.shared.weight`: encdec takes `embed_tokens` (and the
  tied `lm_head`) from it and says so, where the reference initialises them randomly.
  BART and mBART learn their positions in a table of `max_position_embeddings + 2` rows (the
  first token reads row 2) and serve `max_position_embeddings` tokens; Marian and Pegasus use a
  fixed sinusoidal table, computed as the reference computes it (a Marian save does not store
  it). BART and Marian are post-norm; mBART and Pegasus pre-norm with a final `layer_norm`;
  Marian and Pegasus scale embeddings by `sqrt(d_model)` when `scale_embedding`. A Marian
  decoder's vocabulary is `decoder_vocab_size`. As an encoder they are an error that says so.
  Of the reference's TF and Flax classes only Flax had one of them (`FlaxBartForCausalLM`):
  `encdec-convert` writes that layout, and refuses `--to tf` / `--to flax` for the others.
- **Warm start** reads the checkpoints people have: base models and the reference's
  `*ForMaskedLM`, `*ForCausalLM`, `ElectraForPreTraining`, … saves; heads an encoder has no
  use for are dropped and reported, weights a decoder lacks (cross-attention, a missing LM
  head) are initialised and listed in the loading info.
"""


def _implemented(backend: str, arch: Architecture) -> tuple[bool, bool]:
    """(as encoder, as decoder) in `backend`, from its `FAMILIES` and the registry (the BART
    family is decoder-only: no encoder whatever the backend holds)."""
    families = importlib.import_module(f"encdec.{backend}.encoder_decoder").FAMILIES
    base, lm = families.get(arch.family, (None, None))
    return (arch.can_encode and base is not None,
            arch.can_decode and lm is not None and arch.lm_class is not None)


def _serves(backend: str, arch: Architecture) -> bool:
    """Whether `backend` implements every role the architecture has (encoder, decoder)."""
    enc, dec = _implemented(backend, arch)
    return (enc or not arch.can_encode) and (dec or not arch.can_decode)


def architectures_table() -> str:
    rows = ["| architecture | `model_type` | config (`encdec.core`) | encoder class | "
            "decoder class | backends |",
            "|---|---|---|---|---|---|"]
    for arch in ARCHITECTURES:
        decoder = f"`{arch.lm_class}`" if arch.lm_class else "— (encoder only)"
        encoder = f"`{arch.base_class}`" if arch.can_encode else "— (decoder only)"
        backends = ", ".join(b for b in BACKENDS if _serves(b, arch))
        rows.append(f"| {arch.name} | {', '.join(f'`{t}`' for t in arch.model_types)} | "
                    f"`{arch.config_class.__name__}` | {encoder} | {decoder} | "
                    f"{backends} |")
    return "\n".join(rows)


def matrix() -> str:
    """Encoder rows x decoder columns; a cell lists the backends that run the pair."""
    decoders = [a for a in ARCHITECTURES if a.can_decode]
    rows = ["| encoder \\ decoder | " + " | ".join(a.name for a in decoders) + " |",
            "|---|" + "---|" * len(decoders)]
    for enc in (a for a in ARCHITECTURES if a.can_encode):
        cells = []
        for dec in decoders:
            ok = [b for b in BACKENDS if _implemented(b, enc)[0] and _implemented(b, dec)[1]]
            cells.append(" ".join(ok) if ok else "—")
        rows.append(f"| **{enc.name}** | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def limits_table() -> str:
    """Position limits of each architecture's default config."""
    rows = ["| architecture | `max_position_embeddings` (default) | tokens per sequence |",
            "|---|---|---|"]
    for arch in ARCHITECTURES:
        config = arch.config_class()
        rows.append(f"| {arch.name} | {config.max_position_embeddings} | "
                    f"{max_positions(config)} |")
    return "\n".join(rows)


def render() -> str:
    """The whole page."""
    decoders = ", ".join(a.name for a in ARCHITECTURES if not a.can_decode)
    encoders = ", ".join(a.name for a in ARCHITECTURES if not a.can_encode)
    return "\n".join([
        HEADER,
        "## Architectures", "",
        architectures_table(), "",
        "## Encoder x decoder x backend", "",
        "Rows are encoders, columns decoders; a cell lists the backends that run the pair "
        f"(pt = `encdec.pt`, tf = `encdec.tf`, flax = `encdec.flax`). Not a decoder: "
        f"{decoders}. Not an encoder (decoders only): {encoders}.", "",
        matrix(), "",
        "## Sequence length", "",
        limits_table(), "",
        FOOTER,
    ])


if __name__ == "__main__":
    print(render(), end="")
