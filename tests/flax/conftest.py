"""Helpers for the Flax NNX backend tests: transformers (the oracle, PyTorch) loaders and array
utilities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def to_torch(batch: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def to_numpy(x) -> np.ndarray:
    """A torch tensor or a JAX/numpy array as float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().float().numpy()
    return np.asarray(x, dtype=np.float64)


def max_diff(a, b) -> float:
    """Max abs difference of two arrays/tensors, or of two equally long tuples of them."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), (len(a), len(b))
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture
def hf_model():
    """`hf_model(directory, attn="sdpa")`: transformers' EncoderDecoderModel in eval mode.

    "sdpa" is the reference's default; "eager" is the only one that returns attentions.
    """
    import transformers as tr

    def load(directory, attn: str = "sdpa", **kwargs):
        return tr.EncoderDecoderModel.from_pretrained(directory, attn_implementation=attn,
                                                      **kwargs).eval()

    return load
