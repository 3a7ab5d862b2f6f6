"""Loading is the same in every backend (issue 20): a keyword argument that is neither a config
field nor a loader option is the reference's TypeError naming it, raised before any file is
read (`from_pretrained`, `from_encoder_decoder_pretrained`, a backbone's `from_pretrained`); a
config field is applied; and the model `from_pretrained` / `from_encoder_decoder_pretrained`
return is finished as the reference's: in inference mode (dropout off), every parameter
assigned (the checkpoint's values, the reference's init for what it lacks) and tied weights
one storage. Each check reads the model through the adapters (`backend.variable`) and a small
per-backend helper below (`dropout_active`), so a
backend that skips a step fails here."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from encdec.core.registry import encoder_decoder_table, initializers
from tests.conftest import make_batch, tiny_kwargs

BAD = ("num_beam", "quantize")


# --- what each backend holds, read without the adapters -----------------------------------

def dropout_active(name: str, model) -> bool:
    """Whether any dropout of `model` would drop in a call without a mode argument."""
    if name == "pt":
        return any(m.training for m in model.modules())
    if name == "flax":
        from flax import nnx

        return any(not m.deterministic for _, m in nnx.iter_modules(model)
                   if isinstance(m, nnx.Dropout))
    import inspect  # Keras: dropout runs only when a call passes training=True

    return inspect.signature(model.call).parameters["training"].default is not False


def assert_tied(backend, model) -> None:
    """Every tied parameter of the model's table is its source's storage (or holds none, where
    the backend's head reads the source; never in PyTorch)."""
    table = encoder_decoder_table(model.config)
    tied = [p for p in table.params if p.tied_to is not None]
    assert tied
    for p in tied:
        src = p
        while src.tied_to is not None:
            src = table.by_name[src.tied_to]
        held, name = backend.variable(model, p.name), backend.name
        assert (held is not None or name != "pt") and (held is None or
                                                       held is backend.variable(model, src.name)), \
            f"{name}: {p.name} is not tied to {src.name}"


def assert_finished(backend, model, tmp_path) -> dict[str, np.ndarray]:
    """Inference mode (as the flag says and as two equal forwards show), tied weights tied;
    returns the weights as saved (every parameter must have a value to be saved)."""
    assert not dropout_active(backend.name, model), f"{backend.name}: dropout on after loading"
    b = make_batch(seed=1)
    b = {k: b[k] for k in ("input_ids", "attention_mask", "decoder_input_ids")}
    first, second = (backend.forward(model, b)["logits"] for _ in range(2))
    np.testing.assert_array_equal(first, second)  # dropout 0.1 in these configs
    assert_tied(backend, model)
    backend.save(model, tmp_path)
    return load_file(tmp_path / "model.safetensors")


# --- unknown keyword arguments ------------------------------------------------------------

def test_unknown_keyword_is_a_type_error_before_reading(backend, tmp_path):
    m, nowhere = backend.module, tmp_path / "does-not-exist"
    composite = m.EncoderDecoderModel
    calls = {
        "from_pretrained": lambda **kw: composite.from_pretrained(nowhere, **kw),
        "from_encoder_decoder_pretrained":
            lambda **kw: composite.from_encoder_decoder_pretrained(nowhere, nowhere, **kw),
        "BertModel.from_pretrained": lambda **kw: m.BertModel.from_pretrained(nowhere, **kw),
        "GPT2LMHeadModel.from_pretrained":
            lambda **kw: m.GPT2LMHeadModel.from_pretrained(nowhere, **kw),
    }
    for what, call in calls.items():
        keys = list(BAD) + (["encoder_num_beam", "decoder_quantize", "num_beams"]
                            if what == "from_encoder_decoder_pretrained" else [])
        for key in keys:
            with pytest.raises(TypeError, match=f"unexpected keyword argument '{key}'"):
                call(**{key: 4})


# --- from_pretrained ------------------------------------------------------------------------

@pytest.mark.parametrize("pair", ["bert2bert", "roberta2roberta_tied"])
def test_from_pretrained_finished(backend, reference_dir, pair, tmp_path):
    directory = reference_dir(pair)
    model, report = backend.module.EncoderDecoderModel.from_pretrained(
        directory, decoder_start_token_id=5, output_loading_info=True)
    assert model.config.decoder_start_token_id == 5  # a config field, applied
    assert report.missing == []
    saved = assert_finished(backend, model, tmp_path)
    want = load_file(directory / "model.safetensors")
    assert set(saved) <= set(want)
    for k, v in saved.items():  # every parameter the checkpoint's, bit for bit
        np.testing.assert_array_equal(v, want[k], err_msg=f"{backend.name} {k}")
    import json

    written = json.loads((tmp_path / "config.json").read_text())
    assert written["decoder_start_token_id"] == 5


def test_tied_checkpoint_with_the_shared_tensors_once(backend, reference_dir, tmp_path):
    """transformers 4.x saved a tied encoder-decoder (`tie_encoder_decoder=True`) with the
    shared tensors under the decoder's names only (issue 22; 5.x writes both): it loads, every
    parameter equal to the full file's, and the encoder and decoder still share storage."""
    import shutil

    from safetensors.numpy import save_file

    from encdec.core import EncoderDecoderConfig

    directory = reference_dir("roberta2roberta_tied")
    table = encoder_decoder_table(EncoderDecoderConfig.from_pretrained(directory))
    shared = {p.tied_to for p in table.params if p.tied_to and p.tied_to.startswith("encoder.")}
    full = load_file(directory / "model.safetensors")
    assert shared and shared <= set(full)
    once = tmp_path / "once"
    shutil.copytree(directory, once)
    save_file({k: v for k, v in full.items() if k not in shared}, once / "model.safetensors",
              metadata={"format": "pt"})
    model, report = backend.module.EncoderDecoderModel.from_pretrained(
        once, output_loading_info=True)
    assert report.missing == []
    saved = assert_finished(backend, model, tmp_path / "saved")
    assert set(saved) == set(full)  # written in full again, as transformers 5 writes it
    for k, v in saved.items():
        np.testing.assert_array_equal(v, full[k], err_msg=f"{backend.name} {k}")


# --- from_encoder_decoder_pretrained ---------------------------------------------------------

@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """A transformers BertModel (hidden 32) and a BertModel of hidden 24: as a decoder it lacks
    cross-attention and the LM head, and the composite needs an `enc_to_dec_proj`."""
    import torch
    import transformers as tr

    root = tmp_path_factory.mktemp("loading-singles")
    for i, (side, hidden) in enumerate((("enc", 32), ("dec", 24))):
        torch.manual_seed(i)
        tr.BertModel(tr.BertConfig(**tiny_kwargs("bert", hidden))).save_pretrained(root / side)
    return root


def test_warm_start_finished(backend, singles, tmp_path):
    model, info = backend.module.EncoderDecoderModel.from_encoder_decoder_pretrained(
        singles / "enc", singles / "dec", output_loading_info=True, decoder_start_token_id=2,
        encoder_hidden_dropout_prob=0.2)
    assert model.config.encoder.hidden_dropout_prob == 0.2  # a side's config field, applied
    assert model.config.decoder_start_token_id == 2
    saved = assert_finished(backend, model, tmp_path)
    for side in ("encoder", "decoder"):
        src = load_file(singles / ("enc" if side == "encoder" else "dec") / "model.safetensors")
        prefix = "" if side == "encoder" else "bert."
        for k, v in src.items():  # loaded: the checkpoint's values
            if f"{side}.{prefix}{k}" in saved:
                np.testing.assert_array_equal(saved[f"{side}.{prefix}{k}"], v)
        sub = getattr(model, side)
        missing = set(info[side].missing)
        assert (side == "decoder") == bool(missing)
        # newly initialised: the reference's init (a backend that skips it holds zeros or
        # whatever memory it allocated)
        for p, init in initializers(sub.table(), getattr(model.config, side), missing):
            check_init(saved[f"{side}.{p.name}"], init, f"{backend.name} {side}.{p.name}")
    own = [p for p in model.table().owned if p.name.startswith("enc_to_dec_proj.")]
    assert own
    for p, init in initializers(model.table(), model.config.decoder, {p.name for p in own}):
        check_init(saved[p.name], init, f"{backend.name} {p.name}")


def check_init(value: np.ndarray, init, what: str) -> None:
    value = np.asarray(value, np.float64)
    if init.kind == "ones":
        np.testing.assert_array_equal(value, 1.0, err_msg=what)
    elif init.kind == "zeros":
        np.testing.assert_array_equal(value, 0.0, err_msg=what)
    elif init.kind == "normal":
        assert 0.5 * init.std < value.std() < 1.5 * init.std, (what, value.std(), init.std)
        assert abs(value.mean()) < 0.5 * init.std, (what, value.mean())
    else:
        np.testing.assert_array_equal(value, init.array, err_msg=what)


def test_backbone_keywords(backend, singles):
    """A backbone's `from_pretrained` applies its config's fields and refuses another config
    class's field once the checkpoint's config.json says which class it is (before weights)."""
    m = backend.module
    model = m.BertModel.from_pretrained(singles / "enc", hidden_dropout_prob=0.3)
    assert model.config.hidden_dropout_prob == 0.3
    assert not dropout_active(backend.name, model)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_embd'"):
        m.BertModel.from_pretrained(singles / "enc", n_embd=16)


def test_backbone_from_pretrained_finished(backend, singles, tmp_path):
    """A backbone's `from_pretrained` ends as the composite's (`modeling.finish`): a BERT base
    checkpoint read as a cross-attending causal LM gets the reference's init for the head and
    cross-attention it lacks, its head tied to the word embeddings, in inference mode."""
    lm, info = backend.module.BertLMHeadModel.from_pretrained(
        singles / "dec", is_decoder=True, add_cross_attention=True, output_loading_info=True)
    assert not dropout_active(backend.name, lm), f"{backend.name}: dropout on after loading"
    missing = set(info.missing)
    assert any("crossattention" in n for n in missing) and any("cls." in n for n in missing)
    lm.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    src = load_file(singles / "dec" / "model.safetensors")
    for k, v in src.items():
        if f"bert.{k}" in saved:
            np.testing.assert_array_equal(saved[f"bert.{k}"], v)
    for p, init in initializers(lm.table(), lm.config, missing):
        if p.name in saved:
            check_init(saved[p.name], init, f"{backend.name} {p.name}")
    for p in lm.table().params:
        if p.tied_to is not None:
            held = backend.variable(lm, p.name)
            assert held is None or held is backend.variable(lm, p.tied_to), \
                f"{backend.name}: {p.name} is not tied to {p.tied_to}"

