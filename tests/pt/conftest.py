"""Helpers for the PyTorch backend tests: transformers (the oracle) loaders and tensor utilities."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}


def max_diff(a, b) -> float:
    """Max abs difference of two tensors, or of two equally long tuples of tensors."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b), (len(a), len(b))
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    return (a.detach().float() - b.detach().float()).abs().max().item()


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
