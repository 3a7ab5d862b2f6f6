"""Shared by the export tests of every format: the pairs and generation settings of the
acceptance matrix, their padded batches, and encdec pt's tokens (the expected output)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.generation.oracle import batch, checkpoint

EXPORT_PAIRS = ("bert2bert", "bert2gpt2", "roberta2roberta", "bert2bart")
SETTINGS = {  # generation settings fixed at export time
    "greedy": dict(max_new_tokens=8),
    "beam4": dict(max_new_tokens=8, num_beams=4),
    "beam4_processors": dict(max_new_tokens=8, num_beams=4, no_repeat_ngram_size=2,
                             repetition_penalty=1.3),
}
BATCH_SIZES = (1, 3)
# unmarked (fast): bert2bert greedy and beam; every other combination is marked slow
FAST = {("bert2bert", "greedy"), ("bert2bert", "beam4")}


def cases(fast=FAST, pairs=EXPORT_PAIRS, settings=tuple(SETTINGS)) -> list:
    """pytest params (pair, setting name) of `pairs` x `settings`, those outside `fast` marked
    slow."""
    return [pytest.param(n, s, id=f"{n}-{s}",
                         marks=() if (n, s) in fast else pytest.mark.slow)
            for n in pairs for s in settings]


def inputs(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A padded batch of `size` (1: one unpadded row; 3: rows with 3, 0 and 1 padding)."""
    ids, mask = batch(seed=1, size=3, src_len=9, name=name)
    if size == 1:
        return ids[:1, :7], mask[:1, :7]
    return ids, mask


@functools.lru_cache(maxsize=None)
def pt_model(name: str):
    """encdec pt's model loaded from the reference checkpoint of pair `name`."""
    from encdec.pt import EncoderDecoderModel

    return EncoderDecoderModel.from_pretrained(checkpoint(name))


def pt_tokens(name: str, setting: str, size: int) -> np.ndarray:
    """What encdec pt's generate returns (the expected tokens of every export)."""
    ids, mask = inputs(name, size)
    return pt_model(name).generate(ids, mask, **SETTINGS[setting]).numpy()
