"""Property tests of every checkpoint reader (tests/fuzz/readers.py): whatever bytes or JSON a
file holds, reading it gives the library's own error naming the file, or data no larger than the
file; never another exception. Bounded (derandomized, a fixed number of examples) to run in CI;
tests/fuzz/fuzz_readers.py is the open-ended, coverage-guided version."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.readers import TARGETS, run, seeds

with tempfile.TemporaryDirectory() as _tmp:
    SEEDS = seeds(Path(_tmp))

# ENCDEC_FUZZ_EXAMPLES=N: N random examples per property instead of CI's fixed 40
_N = int(os.environ.get("ENCDEC_FUZZ_EXAMPLES", "0"))
CI = settings(max_examples=_N or 40, deadline=None, derandomize=not _N, database=None,
              suppress_health_check=list(HealthCheck))


def _run(target: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run(target, data, Path(tmp))


# ----------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_bytes(draw, target: str) -> bytes:
    """A valid file of `target` with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS[target])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_json(draw, target: str) -> bytes:
    """A valid JSON file of `target` with one value replaced, one key removed, or one added."""
    doc = json.loads(draw(st.sampled_from(SEEDS[target])))
    path = draw(st.sampled_from(list(_paths(doc))[1:]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    kind = draw(st.sampled_from(["replace", "remove", "add"]))
    if kind == "replace":
        parent[path[-1]] = draw(json_values)
    elif kind == "remove" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=12))] = draw(json_values)
    return json.dumps(doc).encode()


DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F128", "", 3, None])
SIZES = st.integers(-2, 8) | st.sampled_from([2**31, 2**40, 2**63, 2**64])


@st.composite
def safetensors_files(draw) -> bytes:
    """Headers built from parts: any dtype, shape and offsets, any data length, and a header
    length that may disagree with the header."""
    header = {}
    for name in draw(st.lists(st.sampled_from("abcd"), max_size=4)):
        entry = {"dtype": draw(DTYPES), "shape": draw(st.lists(SIZES, max_size=3)),
                 "data_offsets": draw(st.lists(SIZES, min_size=1, max_size=3))}
        header[name] = {k: v for k, v in entry.items() if draw(st.integers(0, 9))}
    if draw(st.booleans()):
        header["__metadata__"] = draw(json_values)
    text = json.dumps(header).encode()
    length = draw(st.sampled_from([len(text), len(text) + 1, len(text) - 1, 2**40, 2**64 - 1]))
    return struct.pack("<Q", max(length, 0)) + text + draw(st.binary(max_size=64))


# ----------------------------------------------------------------------------- properties


@CI
@given(st.sampled_from(sorted(TARGETS)), st.binary(max_size=256))
def test_any_bytes(target, data):
    _run(target, data)


@CI
@given(st.data())
def test_mutated_files(data):
    target = data.draw(st.sampled_from(sorted(TARGETS)))
    _run(target, data.draw(mutated_bytes(target)))


@CI
@given(st.data())
def test_mutated_json(data):
    target = data.draw(st.sampled_from(["index", "config", "model_config", "generation_config"]))
    _run(target, data.draw(mutated_json(target)))


@CI
@given(safetensors_files())
def test_safetensors_headers(data):
    tracemalloc.start()
    try:
        _run("safetensors", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20 + 64 * len(data)  # nothing allocated from a declared size
