"""Session fixtures of the harness: one adapter per backend, and each pair's reference
checkpoint (tests/generation/oracle.py: input-dependent weights) loaded once per backend."""

from __future__ import annotations

import pytest

from tests.generation import oracle
from tests.harness.backends import ADAPTERS


class Adapters(dict):
    """backend name -> its adapter, made (and its framework imported) on first use, so that a
    backend that fails to import fails only its own tests."""

    def __missing__(self, name: str):
        self[name] = ADAPTERS[name]()
        return self[name]


@pytest.fixture(scope="session")
def adapters() -> Adapters:
    return Adapters()


@pytest.fixture(scope="session")
def ours(adapters):
    """`ours(name, backend)` -> that backend's model of pair `name`, loaded once per session
    from `oracle.checkpoint(name)` (tests must not change its weights)."""
    cache = {}

    def get(name: str, backend: str):
        if (name, backend) not in cache:
            cache[name, backend] = adapters[backend].load(oracle.checkpoint(name))
        return cache[name, backend]

    return get


@pytest.fixture(scope="session", params=list(ADAPTERS))
def backend(request, adapters):
    """Each backend's adapter in turn (tests/harness/backends.py): a test that takes `backend`
    runs once per backend, its id ending in `[pt]`, `[tf]` or `[flax]`."""
    return adapters[request.param]
