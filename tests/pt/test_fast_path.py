"""The PyTorch decoding fast path (issue 10) against the plain paths it replaces.

`decode_step` with a Python-int index and one token attends over the filled prefix with
fused q|k|v weights and no self-attention mask; with a tensor index (the ONNX export's traced
path) it writes with `index_copy_` and masks the whole buffer. Both must give the same logits
as one full forward; `generate` (greedy and beam) gives the tokens of
transformers; and the fused weights follow the
parameters: after an optimizer step or `load_state_dict`, `generate` uses the new weights.
"""

from __future__ import annotations

import pytest
import torch

from encdec.pt import EncoderDecoderModel
from tests import tolerances as tol
from tests.conftest import max_diff, pair_batch, to_torch

SLOW = pytest.mark.slow  # the fast subset: bert2bert and bert2bart (the BERT and BART step code)
NAMES = ["bert2bert", pytest.param("bert2gpt2", marks=SLOW), "bert2bart"]
NEW = 6


def _score_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of two score tensors whose -inf entries (processors) coincide."""
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    finite = torch.isfinite(a)
    return (a[finite] - b[finite]).abs().max().item()


def _inputs(name: str, seed: int = 0):
    b = to_torch(pair_batch(name, seed=seed))
    return b["input_ids"], b["attention_mask"], b["decoder_input_ids"], b["labels"]


@pytest.mark.parametrize("name", NAMES)
def test_int_and_tensor_index_steps_equal_full_forward(name, reference_dir):
    """The int-index fast path (prefix, fused q|k|v, masks built once) and the tensor-index
    path (whole buffer under a mask) both equal the full forward, the encoder padded."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec, _ = _inputs(name, seed=1)
    B, T = dec.shape
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        for index in (int, torch.tensor):
            cache = model.init_cache(states, mask, B, max_length=T + 2)
            steps = []
            for t in range(T):
                logits, cache = model.decode_step(dec[:, t:t + 1], cache, index(t), mask)
                steps.append(logits)
            assert max_diff(full, torch.cat(steps, dim=1)) < tol.CACHE, index


@pytest.mark.parametrize("name", NAMES)
def test_generate_equals_reference(name, reference_dir, hf_model):
    """Greedy and 3-beam tokens == transformers', padded source."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, _, _ = _inputs(name, seed=2)
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW)
    ref = hf_model(reference_dir(name))
    with torch.no_grad():
        for beams in (1, 3):
            theirs = ref.generate(ids, attention_mask=mask, num_beams=beams, **kw)
            assert torch.equal(model.generate(ids, mask, num_beams=beams, **kw), theirs), beams


@pytest.mark.parametrize("name", ["bert2bert", *(pytest.param(n, marks=SLOW)
                                                for n in ("bert2gpt2", "bert2bart"))])
def test_fused_weights_follow_optimizer_step_and_load_state_dict(name, reference_dir):
    """generate after an AdamW step, and after load_state_dict of other weights, equals a
    fresh model holding the same weights (the fused q|k|v copies are rebuilt)."""
    model = EncoderDecoderModel.from_pretrained(reference_dir(name))
    ids, mask, dec, labels = _inputs(name, seed=3)
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, output_scores=True,
              return_dict_in_generate=True)

    def decode(m):
        out = m.generate(ids, mask, **kw)
        return out["sequences"], torch.stack(list(out["scores"]))

    before = decode(model)  # builds the fused copies
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()
    model.eval()
    fresh = EncoderDecoderModel.from_pretrained(reference_dir(name))
    fresh.load_state_dict(model.state_dict())
    after, expected = decode(model), decode(fresh)
    assert _score_diff(after[1], before[1]) > 1e-3  # the step changed the scores
    assert torch.equal(after[0], expected[0]) and _score_diff(after[1], expected[1]) < tol.SCORES
    # load_state_dict into a model whose fused copies are built: back to the original weights
    model.load_state_dict(EncoderDecoderModel.from_pretrained(reference_dir(name)).state_dict())
    again = decode(model)
    assert torch.equal(again[0], before[0]) and _score_diff(again[1], before[1]) < tol.SCORES
