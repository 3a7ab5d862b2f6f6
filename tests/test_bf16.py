"""bfloat16 in every backend: `from_pretrained(..., dtype=)` / `torch_dtype=` as transformers 5
("auto" by default: the checkpoint's dtype), parameters held and computed in bf16, logits
within the documented bf16 bound of fp32, fp32 generation scores, BF16 checkpoints that
round-trip bit for bit and that transformers loads, clear errors, and `encdec-convert
--dtype bfloat16` output loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encdec.convert.cli import main as convert_main
from tests.conftest import pair_batch
from tests.harness.backends import ADAPTERS
from tests.tolerances import BF16_LOGITS

BACKENDS = ("pt", "tf", "flax")


@pytest.fixture(scope="module")
def adapters():
    return {}


def adapter(adapters, name):
    if name not in adapters:
        adapters[name] = ADAPTERS[name]()
    return adapters[name]


def params_of(backend: str, model) -> dict[str, np.ndarray]:
    """Every parameter of `model` by path, as numpy (bf16 as ml_dtypes.bfloat16)."""
    if backend == "pt":
        from encdec.pt import params

        return {n: params.get(model, n) for n, _ in model.named_parameters()}
    module = __import__(f"encdec.{backend}.params", fromlist=["variables", "get"])
    return {n: module.get(model, n) for n in module.variables(model)}


def dtypes(backend: str, model) -> set[str]:
    return {a.dtype.name for a in params_of(backend, model).values()}


def logits(ad, model, batch) -> np.ndarray:
    """The forward's logits as float32 numpy (bf16 widened exactly)."""
    out = model(**ad.inputs(batch)).logits
    if hasattr(out, "detach"):
        out = out.detach().float()
    return np.asarray(out).astype(np.float32)


def safetensors_dtypes(directory: Path) -> set[str]:
    raw = (directory / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


# bf16 logits + generate: bert2bert in pt in the fast subset; every backend's bf16 dtypes,
# save/load and errors stay fast below
@pytest.mark.parametrize("pair", ["bert2bert", pytest.param("bert2gpt2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("backend", ["pt", *(pytest.param(b, marks=pytest.mark.slow)
                                            for b in ("tf", "flax"))])
def test_bf16_load_logits_generate(adapters, reference_dir, backend, pair):
    ad = adapter(adapters, backend)
    d = reference_dir(pair)
    fp32 = ad.load(d)
    bf16 = ad.module.EncoderDecoderModel.from_pretrained(d, dtype="bfloat16")
    assert dtypes(backend, fp32) == {"float32"}
    assert dtypes(backend, bf16) == {"bfloat16"}
    assert bf16.config.dtype == bf16.config.encoder.dtype == "bfloat16"
    batch = pair_batch(pair)
    del batch["labels"]
    ref, got = logits(ad, fp32, batch), logits(ad, bf16, batch)
    scale = float(np.abs(ref).max())
    rel = float(np.abs(got - ref).max()) / scale
    assert 0 < rel <= BF16_LOGITS, f"bf16 vs fp32 logits: {rel:.3g} of max |logit| {scale:.3g}"
    x = ad.inputs({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    # greedy on bert2bert, beams on bert2gpt2: each search loop and each cache layout in bf16
    # once (a compile each in tf and flax)
    for beams in {"bert2bert": (1,), "bert2gpt2": (3,)}[pair]:
        out = bf16.generate(x["input_ids"], x["attention_mask"], max_new_tokens=4,
                            num_beams=beams, output_scores=True, return_dict_in_generate=True)
        ids = np.asarray(out.sequences)
        assert ids.shape == (3, 5) and (ids[:, 0] == 2).all()
        assert {np.asarray(s).dtype.name for s in out.scores} == {"float32"}
        assert np.isfinite(np.asarray(out.scores[0], np.float32)).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_save_load_round_trip(adapters, reference_dir, tmp_path, backend):
    import torch
    import transformers as tr

    ad = adapter(adapters, backend)
    model = ad.module.EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"),
                                                         dtype="bfloat16")
    model.save_pretrained(tmp_path / "out")
    assert safetensors_dtypes(tmp_path / "out") == {"BF16"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == config["encoder"]["dtype"] == config["decoder"]["dtype"] == \
        "bfloat16"
    again = ad.module.EncoderDecoderModel.from_pretrained(tmp_path / "out")  # "auto": bf16
    before, after = params_of(backend, model), params_of(backend, again)
    assert before.keys() == after.keys()
    for k in before:  # bit-identical
        assert before[k].dtype == after[k].dtype and before[k].tobytes() == after[k].tobytes(), k
    # transformers loads it, in bf16, with the values saved
    ref = tr.EncoderDecoderModel.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "model.safetensors")
    state = ref.state_dict()
    for k, v in saved.items():
        assert state[k].dtype == torch.bfloat16 and torch.equal(state[k], v), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_arguments_as_the_reference(adapters, reference_dir, tmp_path, backend):
    ad = adapter(adapters, backend)
    cls = ad.module.EncoderDecoderModel
    d = reference_dir("bert2bert")
    # torch_dtype=, the older spelling; dtype= wins when both are given
    assert dtypes(backend, cls.from_pretrained(d, torch_dtype="bfloat16")) == {"bfloat16"}
    assert dtypes(backend, cls.from_pretrained(d, dtype="float32", torch_dtype="bfloat16")) \
        == {"float32"}
    assert dtypes(backend, cls.from_pretrained(d, dtype="auto")) == {"float32"}
    for bad, arg in (("bf16", "dtype"), (3, "dtype"), ("int8", "dtype")):
        with pytest.raises(ValueError, match=f"{arg}={bad!r} is not a dtype"):
            cls.from_pretrained(d, **{arg: bad})
    with pytest.raises(ValueError, match="torch_dtype='nope' is not a dtype"):
        cls.from_pretrained(d, torch_dtype="nope")


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_start_dtype(adapters, tmp_path, backend, minilm_dir):
    ad = adapter(adapters, backend)
    cls = ad.module.EncoderDecoderModel
    model = cls.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, dtype="bfloat16")
    assert dtypes(backend, model) == {"bfloat16"}
    assert model.config.dtype == "bfloat16"
    with pytest.raises(ValueError, match="encoder loads in bfloat16 and the decoder in float32"):
        cls.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, encoder_dtype="bfloat16")


@pytest.fixture(scope="module")
def converted_bf16(reference_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16-convert") / "out"
    assert convert_main([str(reference_dir("bert2gpt2")), str(out), "--to", "pt",
                         "--dtype", "bfloat16"]) == 0
    return out


@pytest.mark.parametrize("backend", ["pt", "tf", pytest.param("flax", marks=pytest.mark.slow)])
def test_converter_bfloat16_loads_back(adapters, reference_dir, converted_bf16, backend):
    ad = adapter(adapters, backend)
    assert safetensors_dtypes(converted_bf16) == {"BF16"}
    model = ad.load(converted_bf16)  # config.json says bfloat16: loaded in it ("auto")
    assert dtypes(backend, model) == {"bfloat16"}
    batch = pair_batch("bert2gpt2")
    del batch["labels"]
    ref = logits(ad, ad.load(reference_dir("bert2gpt2")), batch)
    rel = float(np.abs(logits(ad, model, batch) - ref).max()) / float(np.abs(ref).max())
    assert rel <= BF16_LOGITS
