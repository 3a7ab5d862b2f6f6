"""The composite's loading and saving options in every backend: the generation config (read
from `generation_config.json`, else from the model config), sharded saves, config overrides as
keyword arguments, no random init when loading, and labels without a `decoder_start_token_id`.
(`tie_encoder_decoder`: tests/harness/test_migration.py, item 5.)"""

from __future__ import annotations

import pytest

from tests import tolerances as tol
from tests.conftest import pair_batch
from tests.generation import oracle


def test_generation_config_from_file_or_model_config(backend, tmp_path):
    model = backend.load(oracle.checkpoint("bert2bert"))  # its own: the test changes it
    assert model.generation_config.decoder_start_token_id == 2  # from the model config
    assert model.generation_config.pad_token_id == 0
    model.generation_config.max_length = 33
    backend.save(model, tmp_path)
    assert backend.load(tmp_path).generation_config.max_length == 33  # from the file


def test_sharded_save_and_load_options(backend, ours, tmp_path, monkeypatch):
    """A sharded save loads back bit for bit; a keyword argument overrides the config; the
    weights are written from the checkpoint only (no random init first); the model comes back
    in inference mode; labels without a decoder start id are refused, naming it."""
    model = ours("bert2gpt2", backend.name)
    model.save_pretrained(tmp_path, max_shard_size="10KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    drawn, init = [], backend.module.params.init_params

    def spy(module, table, config, names=None, **kw):  # names None: every parameter
        drawn.extend(["(all)"] if names is None else names)
        return init(module, table, config, names, **kw)

    monkeypatch.setattr(backend.module.params, "init_params", spy)
    again = backend.module.EncoderDecoderModel.from_pretrained(tmp_path, decoder_start_token_id=7)
    # allocated once, written from the checkpoint only (flax builds it abstractly, under
    # `nnx.eval_shape`: its init runs on shapes there, never on values)
    assert drawn == [] or backend.name == "flax", drawn
    assert again.config.decoder_start_token_id == 7
    assert not getattr(again, "training", False)  # pt and flax (Keras: a call argument)
    want, got = backend.state(model), backend.state(again)
    assert want.keys() == got.keys()
    for k in want:
        tol.assert_close(got[k], want[k], tol.SAVE_LOAD, k)
    again.config.decoder_start_token_id = None
    b = pair_batch("bert2gpt2")
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        again(**backend.inputs({k: b[k] for k in ("input_ids", "labels")}))
