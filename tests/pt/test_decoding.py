"""Cached decoding: the public forward's legacy `past_key_values` and the static-cache
contract (`init_cache` / `decode_step`, beams sharing cross K/V) against one full forward."""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from tests.conftest import make_batch

from .conftest import max_diff, to_torch

TOL = 1e-5
NAMES = ["bert2bert", "bert2gpt2", "bert2gpt2_proj"]


def _inputs(seed=0):
    b = to_torch(make_batch(seed=seed))
    return b["input_ids"], b["attention_mask"], b["decoder_input_ids"]


@pytest.mark.parametrize("name", NAMES)
def test_past_key_values_equals_full_forward(name, reference_dir, hf_model):
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec = _inputs()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        enc = model.encoder(input_ids=ids, attention_mask=mask)
        out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, :3],
                    use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        assert len(past) == 2 and len(past[0]) == 4
        for t in range(3, dec.shape[1]):
            out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec[:, t:t + 1],
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    assert max_diff(full, torch.cat(steps, dim=1)) < TOL
    # and the reference's cached step gives the same logits as ours
    ref = hf_model(reference_dir(name))
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, :3], use_cache=True)
        r = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec[:, 3:4],
                past_key_values=r.past_key_values, use_cache=True)
    assert max_diff(r.logits, steps[1]) < TOL


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beams", [1, 2])
def test_decode_step_equals_full_forward(name, beams, reference_dir):
    """Token by token through the static cache == one full forward over the repeated batch."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec = _inputs(seed=2)
    be, T = dec.shape
    rows = dec.repeat_interleave(beams, dim=0)  # rows b*k .. b*k+k-1 belong to example b
    if beams == 2:  # make the two beams of an example differ
        rows[1::2, 2:] = torch.flip(rows[1::2, 2:], dims=[1])
    with torch.no_grad():
        full = model(input_ids=ids.repeat_interleave(beams, 0),
                     attention_mask=mask.repeat_interleave(beams, 0),
                     decoder_input_ids=rows).logits  # (Be*k, T, V)
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        cache = model.init_cache(states, mask, be * beams, max_length=T + 3)
        k_buf = cache[0][0]
        assert k_buf.shape[0] == be * beams and k_buf.shape[2] == T + 3
        assert cache[0][2].shape[0] == be  # cross K/V: the encoder's batch, never repeated
        logits = []
        for t in range(T):
            step, cache = model.decode_step(rows[:, t:t + 1], cache, torch.tensor(t), mask)
            logits.append(step)
    assert max_diff(full, torch.cat(logits, dim=1)) < TOL


def test_decode_step_chunk_then_tokens(reference_dir):
    """A prompt of several tokens in one step, then single tokens (cache_index a Python int);
    decoding runs without dropout even when the model is in training mode."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2bert"))
    ids, mask, dec = _inputs(seed=3)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        model.train()
        cache = model.init_cache(states, mask, dec.shape[0], max_length=16)
        first, cache = model.decode_step(dec[:, :4], cache, 0, mask)
        rest = []
        for t in range(4, dec.shape[1]):
            step, cache = model.decode_step(dec[:, t:t + 1], cache, t, mask)
            rest.append(step)
    assert model.training
    assert max_diff(full, torch.cat([first, *rest], dim=1)) < TOL


def test_decode_step_with_decoder_padding(reference_dir):
    """A decoder padding mask over the cache positions == the forward's decoder_attention_mask."""
    model = EncoderDecoderModel.from_pretrained(reference_dir("bert2gpt2"))
    ids, mask, dec = _inputs(seed=4)
    B, T = dec.shape
    dmask = torch.ones(B, T, dtype=torch.long)
    dmask[0, 1:3] = 0
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                     decoder_attention_mask=dmask).logits
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        cache = model.init_cache(states, mask, B, max_length=T)
        steps = []
        for t in range(T):
            step, cache = model.decode_step(dec[:, t:t + 1], cache, t, mask,
                                            decoder_attention_mask=dmask)
            steps.append(step)
    assert max_diff(full, torch.cat(steps, dim=1)) < TOL


