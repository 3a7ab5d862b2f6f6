"""The registry against transformers: position ids (RoBERTa's rule from the input ids), the
position limits, the init rules as data (against each reference model's `_init_weights`),
lookups and the clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from encdec.core import ConfigError
from encdec.core.config import CONFIG_CLASSES
from encdec.core.registry import (
    ARCHITECTURES,
    architecture,
    config_classes,
    decoder_table,
    encoder_table,
    initializers,
    max_positions,
    position_ids,
    position_offset,
    sinusoidal_table,
    support_matrix,
)
from tests.conftest import tiny_kwargs


def tiny_pad(model_type: str) -> dict:
    """`pad_token_id=0` where the config's default lies outside the tiny vocabulary (Marian's
    58100), else nothing."""
    pad = architecture(model_type).config_class().pad_token_id
    return {"pad_token_id": 0} if pad is not None and pad >= 99 else {}


def core_config(model_type: str, **kw):
    return architecture(model_type).config_class(**{**tiny_kwargs(model_type),
                                                    **tiny_pad(model_type), **kw})


@pytest.mark.parametrize("past", [0, 3])
@pytest.mark.parametrize("arch", [a.name for a in ARCHITECTURES])
def test_against_hf_position_ids(arch, past):
    """RoBERTa-like: transformers' `create_position_ids_from_input_ids` (pads keep `pad`);
    others: past + arange."""
    import torch
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    c = core_config(arch)
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    ids = np.array([[5, 6, 7, pad, pad], [pad, 8, pad, 9, 10]])
    got = position_ids(c, ids, past)
    if max_positions(c) < c.max_position_embeddings:  # the offset rule
        want = RobertaEmbeddings.create_position_ids_from_input_ids(
            torch.from_numpy(ids), padding_idx=pad, cache_length=past).numpy()
        assert max_positions(c) == c.max_position_embeddings - pad - 1
    else:
        want = np.broadcast_to(np.arange(5) + past, ids.shape)
    np.testing.assert_array_equal(got, want)


def test_position_limits():
    assert max_positions(core_config("roberta", max_position_embeddings=514)) == 512
    assert max_positions(core_config("bert", max_position_embeddings=512)) == 512
    assert max_positions(core_config("gpt2")) == 64
    # BART's learned table has 2 more rows than it serves; Marian's sinusoidal one has none
    for name, offset in (("bart", 2), ("mbart", 2), ("marian", 0), ("pegasus", 0)):
        c = core_config(name, max_position_embeddings=64)
        assert (max_positions(c), position_offset(c)) == (64, offset)
        rows = architecture(c).decoder_table(c).by_name["model.decoder.embed_positions.weight"]
        assert rows.shape[0] == 64 + offset


def test_lookups_and_errors():
    """Lookups, the unknown-type error, the support matrix. (A DistilBERT decoder and a BART
    encoder: tests/harness/test_warm_start.py's test_unsupported_side_is_a_clear_error.)"""
    with pytest.raises(ConfigError, match=r"unknown model_type 'nope'; supported: \[.*roberta"):
        architecture("nope")
    for arch in ARCHITECTURES:
        for mt in arch.model_types:
            assert architecture(mt) is arch
        assert architecture(core_config(arch.name)) is arch
    # config dispatch (below the registry) knows the same model types with the same classes
    assert config_classes() == CONFIG_CLASSES, \
        "each architecture's config class is listed in encdec.core.config.CONFIG_CLASSES"
    matrix = support_matrix()
    assert len(matrix) == len(ARCHITECTURES) ** 2
    assert all(ok == (architecture(enc).can_encode and architecture(dec).can_decode)
               for enc, dec, ok in matrix)


@pytest.mark.parametrize("arch, side", [
    (a.name, side) for a in ARCHITECTURES for side in ("encoder", "decoder")
    if (a.can_encode if side == "encoder" else a.can_decode)])  # BART family: decoder rows
def test_against_hf_init_rules(arch, side):
    """`initializers` says what the reference's `_init_weights` does to each parameter: ones,
    zeros, or normal(0, std) with the padding row zeroed."""
    import torch
    import transformers as tr

    a = architecture(arch)
    flags = dict(is_decoder=True, add_cross_attention=True) if side == "decoder" else {}
    c = core_config(arch, **flags)
    table = encoder_table(c) if side == "encoder" else decoder_table(c)
    cls = getattr(tr, a.base_class if side == "encoder" else a.lm_class)
    torch.manual_seed(0)
    ref = cls(tr.AutoConfig.for_model(arch, **tiny_kwargs(arch), **tiny_pad(arch),
                                      **flags)).state_dict()
    checked = 0
    for p, init in initializers(table, c):
        w = ref[p.name].double().numpy()
        if init.kind == "ones":
            assert (w == 1).all(), p.name
        elif init.kind == "zeros":
            assert (w == 0).all(), p.name
        elif init.kind == "array":  # a fixed table (sinusoidal positions): bit for bit
            np.testing.assert_array_equal(init.array, ref[p.name].numpy(), err_msg=p.name)
        elif init.kind == "normal":
            rows = np.ones(len(w), bool)
            if init.zero_row is not None:
                assert (w[init.zero_row] == 0).all(), f"{p.name}: row {init.zero_row} not zero"
                rows[init.zero_row] = False
            n = w[rows].size  # bounds: 5 standard errors of the estimates
            assert abs(w[rows].std() - init.std) < 5 * init.std / np.sqrt(2 * n), \
                (p.name, w[rows].std(), init.std)
            assert abs(w[rows].mean()) < 5 * init.std / np.sqrt(n), p.name
        checked += 1
    assert checked == len(table.owned)


@pytest.mark.parametrize("arch", [a.name for a in ARCHITECTURES
                                  if a.init.sinusoidal and a.init.always_sinusoidal])
@pytest.mark.parametrize("n_pos, dim", [(64, 32), (64, 33), (512, 512), (1024, 1024)])
def test_against_hf_sinusoidal_tables(arch, n_pos, dim):
    """Marian's and Pegasus's position tables (odd widths and real sizes too) are the reference's
    `create_weight`, bit for bit."""
    import importlib

    a = architecture(arch)
    module = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    cls = getattr(module, f"{a.lm_class.removesuffix('ForCausalLM')}SinusoidalPositionalEmbedding")
    want = cls(n_pos, dim).create_weight().numpy()
    np.testing.assert_array_equal(sinusoidal_table(n_pos, dim, a.init.sinusoid), want)


def test_bart_family_is_decoder_only():
    """The BART family: decoder tables with cross-attention whatever the config says, no encoder,
    and the seq2seq checkpoint's shared embedding standing in for `embed_tokens`."""
    bart = [a for a in ARCHITECTURES if a.family == "bart"]
    assert {a.name for a in bart} == {"bart", "mbart", "marian", "pegasus"}
    for a in bart:
        assert not a.can_encode and a.can_decode and a.always_cross_attention
        assert a.base_class is None and a.lm_class.endswith("ForCausalLM")
        c = core_config(a.name, is_decoder=True, add_cross_attention=True)
        table = decoder_table(c)
        names = set(table.by_name)
        assert "model.decoder.layers.0.encoder_attn.k_proj.weight" in names
        assert table.by_name["lm_head.weight"].tied_to == "model.decoder.embed_tokens.weight"
        assert ("model.decoder.layer_norm.weight" in names) == a.layout.final_norm
        assert ("model.decoder.layernorm_embedding.weight" in names) == \
            a.layout.layernorm_embedding
        assert (r"(model\.)?shared\.weight", "model.decoder.embed_tokens.weight") in table.aliases
