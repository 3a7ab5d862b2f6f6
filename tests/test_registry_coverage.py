"""Every registered architecture has an implementation in every backend: its family is in the
backend's `FAMILIES` (a base model class for every architecture that can encode — the BART
family is decoder-only — and a causal LM class exactly when the reference has one), and the
reference's class names (`RobertaModel`, `ElectraForCausalLM`, …) are exported."""

from __future__ import annotations

import importlib

import pytest

from encdec.core.registry import ARCHITECTURES, FAMILIES

BACKENDS = ("pt", "tf", "flax")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_family_has_model_classes(backend):
    families = importlib.import_module(f"encdec.{backend}.encoder_decoder").FAMILIES
    assert set(families) == set(FAMILIES), f"encdec.{backend}: families {sorted(families)}"
    for arch in ARCHITECTURES:
        base, lm = families[arch.family]
        if arch.can_encode:  # the BART family is decoder-only: no base model to serve
            assert isinstance(base, type), f"encdec.{backend}: no base model for {arch.name}"
        if arch.lm_class is None:
            assert lm is None, f"encdec.{backend}: {arch.name} has no causal LM in the reference"
        else:
            assert isinstance(lm, type), f"encdec.{backend}: no causal LM for {arch.name}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_class_names_exported(backend):
    module = importlib.import_module(f"encdec.{backend}")
    families = importlib.import_module(f"encdec.{backend}.encoder_decoder").FAMILIES
    for arch in ARCHITECTURES:
        base, lm = families[arch.family]
        for name, family_class in ((arch.base_class, base), (arch.lm_class, lm)):
            if name is None:
                continue
            assert name in module.__all__, f"encdec.{backend} does not export {name}"
            cls = getattr(module, name)
            assert isinstance(cls, type) and issubclass(cls, family_class), \
                f"encdec.{backend}.{name} is not a {family_class.__name__}"
            assert cls.__name__ == name, f"encdec.{backend}.{name} is named {cls.__name__}"


def test_every_architecture_has_a_test_pair():
    """The harness (tests/conftest.py PAIRS) uses every architecture as encoder, and every one
    that can decode as decoder."""
    from tests.conftest import PAIRS

    encoders = {p.encoder for p in PAIRS.values()}
    decoders = {p.decoder for p in PAIRS.values()}
    for arch in ARCHITECTURES:
        if arch.can_encode and arch.family != "gpt2":  # GPT-2 encoders: not a pairing people train
            assert arch.name in encoders, f"no test pair with a {arch.name} encoder"
        if arch.can_decode:
            assert arch.name in decoders, f"no test pair with a {arch.name} decoder"
