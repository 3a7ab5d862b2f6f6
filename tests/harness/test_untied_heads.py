"""Untied LM heads (tie_word_embeddings=False) in every backend against transformers: a BERT
decoder then uses its own `decoder.weight` and `decoder.bias` (and not `cls.predictions.bias`),
a GPT-2 decoder its own `lm_head.weight`."""

import numpy as np
import pytest
import torch

from tests import tolerances as tol


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    import transformers as tr

    torch.manual_seed(0)
    tiny = dict(vocab_size=61, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=20, max_position_embeddings=32)
    dec = tr.BertConfig(**tiny, is_decoder=True, add_cross_attention=True,
                        tie_word_embeddings=False)
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(tr.BertConfig(**tiny), dec)
    config.decoder_start_token_id, config.pad_token_id = 2, 0
    model = tr.EncoderDecoderModel(config=config).eval()
    with torch.no_grad():  # three different vectors, so a wrong choice shows
        head = model.decoder.cls.predictions
        head.bias.normal_()
        head.decoder.bias.normal_()
        head.decoder.weight.normal_()
    d = tmp_path_factory.mktemp("untied")
    model.save_pretrained(d)
    rng = np.random.default_rng(0)
    batch = dict(input_ids=rng.integers(3, 61, (2, 5)),
                 decoder_input_ids=rng.integers(3, 61, (2, 4)))
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return d, batch, ref


# flax in CI: pt and tf in the fast subset (the head's rule is the table's, shared)
@pytest.mark.parametrize("backend", [
    "pt", "tf", pytest.param("flax", marks=pytest.mark.slow)], indirect=True)
def test_against_hf_untied_bert_head(untied_dir, backend):
    d, batch, ref = untied_dir
    tol.assert_close(backend.forward(backend.load(d), batch)["logits"], ref, tol.FORWARD,
                     f"{backend.name} untied head")
