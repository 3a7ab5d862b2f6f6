"""encdec-convert on real reference files: logits against the reference's recorded ones, files
equal to the reference's own, bit-identical round trips, dtypes, sharding and the split layout."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from encdec.convert.files import H5Reader, read_msgpack
from encdec.core.checkpoint import open_state_dict
from encdec.core.registry import architecture

from .conftest import (
    FIXTURE_FILES,
    REFERENCE_FILES,
    fixture_dir,
    fixture_inputs,
    reference_pair,
    tiered,
)

BOUND = 1e-5  # DESIGN.md, fp32 logits
WITH_BART = frozenset({"bert2bert", "bert2bart"})  # the fast tier of the reference-file tests


def _torch_inputs(name: str) -> dict[str, torch.Tensor]:
    data = fixture_inputs(name)
    return {k: torch.from_numpy(data[k]) for k in
            ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}


def _state(directory) -> dict[str, np.ndarray]:
    with open_state_dict(directory) as reader:
        return {k: reader[k] for k in reader}


@pytest.mark.parametrize("name, fmt", tiered(FIXTURE_FILES))
def test_against_reference_fixture_logits(convert, tmp_path, name, fmt):
    """The reference's own pt / tf / flax files convert to our format; both encdec.pt and
    transformers load the result and reproduce the reference's recorded logits."""
    code, out, err = convert(fixture_dir(name, fmt), tmp_path / "out", "--to", "pt")
    assert code == 0, err
    assert "verify: max |Δlogits|" in out and ": OK" in out
    ref = fixture_inputs(name)["logits"]
    from encdec.pt import EncoderDecoderModel

    ours = EncoderDecoderModel.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        logits = ours(**_torch_inputs(name)).logits.numpy()
    assert np.abs(logits - ref).max() <= BOUND
    theirs = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = theirs(**_torch_inputs(name)).logits.numpy()
    assert np.abs(logits - ref).max() <= BOUND


@pytest.mark.parametrize("name, fmt", tiered(REFERENCE_FILES, WITH_BART))
def test_written_files_hold_the_reference_tensors(convert, tmp_path, name, fmt):
    """pt -> tf / flax writes exactly the tensors (names, dtypes, values) the reference wrote."""
    out = tmp_path / fmt
    assert convert(fixture_dir(name, "pt"), out, "--to", fmt, "--no-verify")[0] == 0
    if fmt == "tf":  # (verification is tested above)
        ours, ref = H5Reader(out / "tf_model.h5"), H5Reader(fixture_dir(name, "tf") / "tf_model.h5")
        ours_keys, ref_keys, get_ours, get_ref = ours.keys(), ref.keys(), ours.get, ref.get
    else:
        ours, ref = (read_msgpack(out / "flax_model.msgpack"),
                     read_msgpack(fixture_dir(name, "flax") / "flax_model.msgpack"))
        ours_keys, ref_keys, get_ours, get_ref = list(ours), list(ref), ours.get, ref.get
    assert sorted(ours_keys) == sorted(ref_keys)
    for k in ref_keys:
        a, b = get_ours(k), get_ref(k)
        assert a.dtype == b.dtype and np.array_equal(a, b), k
    if fmt == "tf":
        ours.close(), ref.close()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["EncoderDecoderModel"]
    assert (out / "generation_config.json").is_file()


@pytest.mark.parametrize("name, fmt", tiered(REFERENCE_FILES, WITH_BART))
def test_round_trip_through_reference_format_is_bit_identical(convert, tmp_path, name, fmt):
    """The reference's pt file -> its tf / flax form -> pt: every tensor bit-identical."""
    assert convert(fixture_dir(name, "pt"), tmp_path / fmt, "--to", fmt, "--no-verify")[0] == 0
    assert convert(tmp_path / fmt, tmp_path / "pt", "--to", "pt", "--no-verify")[0] == 0
    before, after = _state(fixture_dir(name, "pt")), _state(tmp_path / "pt")
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k


@pytest.mark.parametrize("name", ["bert2bert", "bert2gpt2", "bert2bert_proj", "bert2gpt2_proj"])
def test_round_trip_pt_tf_flax_pt_is_bit_identical(convert, reference_dir, tmp_path, name):
    src = tmp_path / "src"
    shutil.copytree(reference_dir(name), src)
    (src / "vocab.txt").write_text("[PAD]\n")  # non-weight files travel along
    steps = [("tf", "tf"), ("flax", "flax"), ("pt", "pt")]
    prev = src
    for target, dirname in steps:
        code, _, err = convert(prev, tmp_path / dirname, "--to", target, "--no-verify")
        assert code == 0, err
        prev = tmp_path / dirname
    before, after = _state(src), _state(tmp_path / "pt")
    assert before.keys() == after.keys()
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k
    assert (tmp_path / "pt" / "vocab.txt").read_text() == "[PAD]\n"


@pytest.mark.parametrize("name", ["bert2bart", "bert2bart_proj", "roberta2mbart", "bert2marian",
                                  "bert2pegasus"])
def test_bart_family_round_trip(convert, reference_dir, tmp_path, name):
    """A BART-family decoder (issue 9) through the formats the reference had for it — Flax's
    `FlaxBartForCausalLM` layout for BART, verified in encdec.flax — and back: bit-identical;
    the tied `lm_head` is stored nowhere, the embedding once."""
    src = reference_dir(name)
    config = json.loads((src / "config.json").read_text())
    arch = architecture(config["decoder"]["model_type"])
    prev = src
    for target in [fmt for fmt, had in (("flax", arch.flax), ("pt", True)) if had]:
        code, out, err = convert(prev, tmp_path / target, "--to", target)
        assert code == 0, err
        assert ": OK" in out
        prev = tmp_path / target
    if arch.flax:
        keys = list(read_msgpack(tmp_path / "flax" / "flax_model.msgpack"))
        assert "decoder/model/decoder/embed_tokens/embedding" in keys
        assert "decoder/model/decoder/layers/0/encoder_attn/k_proj/kernel" in keys
        assert not [k for k in keys if "lm_head" in k]
    before, after = _state(src), _state(tmp_path / "pt")
    assert before.keys() == after.keys()
    assert "decoder.lm_head.weight" not in after
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k


def test_split_of_a_bart_decoder(convert, tmp_path):
    """--split: the decoder half is a `BartForCausalLM` checkpoint the reference loads (its
    embedding under `model.decoder.embed_tokens`, the lm_head tied)."""
    code, out, err = convert(fixture_dir("bert2bart", "pt"), tmp_path / "split", "--to", "flax",
                             "--split")
    assert code == 0, err
    split = tmp_path / "split"
    assert json.loads((split / "decoder" / "config.json").read_text())["architectures"] == \
        ["BartForCausalLM"]
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(split / "encoder"), str(split / "decoder")).eval()
    with torch.no_grad():
        logits = model(**_torch_inputs("bert2bart")).logits.numpy()
    assert np.abs(logits - fixture_inputs("bert2bart")["logits"]).max() <= BOUND


def test_tie_encoder_decoder_copies_travel_as_stored(convert, tmp_path):
    """The decoder copies of a `tie_encoder_decoder` checkpoint (stored in full by the reference)
    go through tf and flax bit-identically, and transformers loads the result unchanged."""
    src = reference_pair("roberta", "roberta", tmp_path / "src", tie_encoder_decoder=True)
    prev = src
    for target in ("tf", "flax", "pt"):
        code, _, err = convert(prev, tmp_path / target, "--to", target, "--no-verify")
        assert code == 0, err
        prev = tmp_path / target
    before, after = _state(src), _state(tmp_path / "pt")
    assert before.keys() == after.keys()
    assert any(k.startswith("decoder.roberta.encoder.") for k in after)
    for k in before:
        assert np.array_equal(before[k], after[k]), k


@pytest.mark.parametrize("target, dtype, stored", [
    ("pt", "bfloat16", "BF16"),  # flax's bfloat16: the same writer as its float16 (fast)
    pytest.param("flax", "bfloat16", "bfloat16", marks=pytest.mark.slow),
    ("tf", "float16", "float16"), ("flax", "float16", "float16")])
def test_dtype(convert, tmp_path, target, dtype, stored):
    code, out, err = convert(fixture_dir("bert2gpt2", "pt"), tmp_path / "out", "--to", target,
                             "--dtype", dtype)
    assert code == 0, err
    assert f"{dtype}, bound" in out
    path = tmp_path / "out"
    if target == "pt":
        header_len = int.from_bytes((path / "model.safetensors").read_bytes()[:8], "little")
        header = json.loads((path / "model.safetensors").read_bytes()[8:8 + header_len])
        assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {stored}
    elif target == "tf":
        reader = H5Reader(path / "tf_model.h5")
        assert {reader.get(k).dtype.name for k in reader.keys()} == {stored}
        reader.close()
    else:
        arrays = read_msgpack(path / "flax_model.msgpack")
        assert {a.dtype.name for a in arrays.values()} == {stored}
    assert json.loads((path / "config.json").read_text())["dtype"] == dtype


def test_shard_size(convert, tmp_path):
    code, _, err = convert(fixture_dir("bert2bert", "flax"), tmp_path / "out", "--to", "pt",
                           "--shard-size", "40KB")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert _state(tmp_path / "out").keys() == _state(fixture_dir("bert2bert", "pt")).keys()


def test_force_replaces_only_after_success(convert, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "tf_model.h5").write_text("stale")
    code, _, err = convert(fixture_dir("bert2bert", "pt"), dst, "--to", "flax", "--force")
    assert code == 0, err
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "flax_model.msgpack",
                                                    "generation_config.json"]
    assert not list(tmp_path.glob(".out.*"))


def test_split_loads_in_the_reference(convert, tmp_path):
    """--split writes what `from_encoder_decoder_pretrained(enc, dec)` accepts (here the
    reference's PyTorch class; its TF/Flax classes take the same dirs with *_from_pt=True)."""
    code, out, err = convert(fixture_dir("bert2bert", "pt"), tmp_path / "split", "--to", "tf",
                             "--split")
    assert code == 0, err
    split = tmp_path / "split"
    assert json.loads((split / "encoder" / "config.json").read_text())["architectures"] == \
        ["BertModel"]
    assert json.loads((split / "decoder" / "config.json").read_text())["architectures"] == \
        ["BertLMHeadModel"]
    assert json.loads((split / "config.json").read_text())["model_type"] == "encoder-decoder"
    model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
        str(split / "encoder"), str(split / "decoder")).eval()
    with torch.no_grad():
        logits = model(**_torch_inputs("bert2bert")).logits.numpy()
    assert np.abs(logits - fixture_inputs("bert2bert")["logits"]).max() <= BOUND


def test_split_keeps_enc_to_dec_proj(convert, tmp_path):
    code, out, err = convert(fixture_dir("bert2gpt2", "pt"), tmp_path / "split", "--to", "flax",
                             "--split")
    assert code == 0, err  # verified: the projection is read back from its own file
    assert (tmp_path / "split" / "enc_to_dec_proj.safetensors").is_file()


def test_pytorch_model_bin_source(convert, tmp_path):
    """A reference directory holding pytorch_model.bin (read with weights_only=True)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(fixture_dir("bert2gpt2", "pt") / "config.json", src)
    state = {k: torch.from_numpy(v) for k, v in _state(fixture_dir("bert2gpt2", "pt")).items()}
    torch.save(state, src / "pytorch_model.bin")
    code, out, err = convert(src, tmp_path / "tf", "--to", "tf")
    assert code == 0, err
    assert ": OK" in out


def test_from_picks_the_weights_to_read(convert, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fixture_dir("bert2bert", "pt"), src)
    shutil.copy2(fixture_dir("bert2bert", "flax") / "flax_model.msgpack", src)
    code, out, err = convert(src, tmp_path / "out", "--to", "tf", "--from", "flax")
    assert code == 0, err
    assert "(flax in encdec.flax vs tf in encdec.tf" in out
