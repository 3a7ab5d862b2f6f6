"""Every decoder is causal (issue 22: transformers 5.9 shipped causal LMs that attended to
future tokens): changing the decoder's tokens at positions >= k leaves the logits at positions
< k unchanged (and changes the later ones), with and without a padded decoder attention mask,
for one pair per decoder model type of the registry, in every backend. The check is shown to
fail on a decoder made bidirectional on purpose."""

from __future__ import annotations

import numpy as np
import pytest

from tests import tolerances as tol
from tests.conftest import FAST_PAIRS, PAIRS, pair_batch

# one pair per decoder model type (a new architecture is here by being in tests/tiny.py's PAIRS)
DECODERS = {}
for _name, _pair in PAIRS.items():
    if _pair.decoder not in DECODERS or _name in FAST_PAIRS:
        DECODERS[_pair.decoder] = _name
NAMES = sorted(DECODERS.values())
K = 3  # the first changed decoder position


def leak(adapter, model, name: str, masked: bool) -> tuple[float, float]:
    """(max |change| of the logits before position K, max |change| from K on) when the
    decoder's tokens from K on are replaced."""
    batch = pair_batch(name, seed=3)
    del batch["labels"]
    if masked:
        batch["decoder_attention_mask"] = np.ones_like(batch["decoder_input_ids"])
        batch["decoder_attention_mask"][0, -2:] = 0
    other = dict(batch, decoder_input_ids=batch["decoder_input_ids"].copy())
    ids = other["decoder_input_ids"]
    ids[:, K:] = (ids[:, K:] + 7) % 90 + 4  # other real tokens (never the pad id)
    a, b = (adapter.forward(model, x)["logits"] for x in (batch, other))
    return tol.max_abs_diff(a[:, :K], b[:, :K]), tol.max_abs_diff(a[:, K:], b[:, K:])


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padded-mask"])
@pytest.mark.parametrize("name", NAMES)
def test_later_tokens_do_not_change_earlier_logits(ours, backend, name, masked):
    before, after = leak(backend, ours(name, backend.name), name, masked)
    assert before <= tol.CACHE, f"{name} {backend.name}: position < {K} changed by {before:.3g}"
    assert after > 1e-3, f"{name} {backend.name}: the changed tokens changed nothing"


def test_the_check_catches_a_bidirectional_decoder(ours, adapters, monkeypatch):
    """pt's decoders with every key visible (the causal mask's query positions pushed past
    the end): the same check reports the leak."""
    from encdec.pt import bart, bert, gpt2, layers

    def bidirectional(batch, q_len, past, kv_len, dtype, padding=None, device=None):
        return layers.causal_mask(batch, q_len, past + kv_len, kv_len, dtype, padding, device)

    for module in (bert, gpt2, bart):
        monkeypatch.setattr(module, "causal_mask", bidirectional)
    for name in ("bert2bert", "bert2gpt2", "bert2bart"):
        before, _ = leak(adapters["pt"], ours(name, "pt"), name, masked=False)
        assert before > 1e-3, f"{name}: a bidirectional decoder was not caught"
