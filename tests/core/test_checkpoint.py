"""Checkpoint I/O: round trips, sharding, .bin reading, bad files, atomic and concurrent saves,
saves killed midway, hub cache."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from encdec.core import checkpoint as ckpt
from encdec.core.checkpoint import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    StateDictReader,
    open_state_dict,
    parse_size,
    read_config_dict,
    resolve_checkpoint,
    write_checkpoint,
)
from tests.core.bad_files import CASES, MARKER

CONFIG = {"model_type": "encoder-decoder", "is_encoder_decoder": True}


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.embeddings.word_embeddings.weight": rng.standard_normal((50, 8), np.float32),
        "encoder.encoder.layer.0.attention.self.query.weight": rng.standard_normal(
            (8, 8), np.float32
        ),
        "encoder.encoder.layer.0.attention.self.query.bias": rng.standard_normal(8, np.float32),
        "decoder.cls.predictions.bias": rng.standard_normal(50).astype(np.float16),
        "decoder.bert.embeddings.position_ids": np.arange(16, dtype=np.int64)[None],
        "decoder.transformer.h.0.attn.c_attn.weight": rng.standard_normal((8, 24)),  # float64
    }


def _assert_same(reader, tensors):
    assert set(reader) == set(tensors)
    for key, value in tensors.items():
        got = reader[key]
        assert isinstance(got, np.ndarray) and got.flags.writeable
        assert got.dtype == value.dtype and got.shape == value.shape, key
        assert got.tobytes() == value.tobytes(), key  # bit-identical
        assert reader.shape(key) == value.shape


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_round_trip_single_file(tmp_path):
    tensors = _tensors()
    out = write_checkpoint(
        tmp_path / "ckpt", tensors, config=CONFIG, generation_config={"max_length": 20}
    )
    assert out == tmp_path / "ckpt"
    assert _entries(out) == sorted([CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_NAME])
    assert read_config_dict(out) == CONFIG
    assert json.loads((out / GENERATION_CONFIG_NAME).read_text()) == {"max_length": 20}
    with open_state_dict(out) as reader:
        _assert_same(reader, tensors)
        assert reader.metadata() == {"format": "pt"}
        assert reader.source(next(iter(tensors))) == out / SAFE_WEIGHTS_NAME
    assert _entries(tmp_path) == ["ckpt"]  # no temporary directory left behind


def test_round_trip_sharded(tmp_path):
    tensors = _tensors()
    out = write_checkpoint(
        tmp_path / "ckpt", iter(tensors.items()), config=CONFIG, max_shard_size=300
    )
    index = json.loads((out / SAFE_WEIGHTS_INDEX_NAME).read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2
    assert shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert not (out / SAFE_WEIGHTS_NAME).exists()
    # the index has the layout transformers reads
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == set(shards)
    with open_state_dict(out) as reader:
        _assert_same(reader, tensors)
        for key, file in index["weight_map"].items():
            assert reader.source(key) == out / file
    # a tensor bigger than the shard size gets a shard of its own
    sizes = {}
    for key, file in index["weight_map"].items():
        sizes[file] = sizes.get(file, 0) + tensors[key].nbytes
    for file, size in sizes.items():
        keys = [k for k, f in index["weight_map"].items() if f == file]
        assert size <= 300 or len(keys) == 1


def test_sharded_checkpoint_loads_in_transformers(tmp_path):
    import torch
    import transformers
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.BertModel(cfg).eval()
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    out = write_checkpoint(tmp_path / "bert", state, config=cfg.to_dict(), max_shard_size="2KB")
    assert (out / SAFE_WEIGHTS_INDEX_NAME).is_file()
    loaded = transformers.BertModel.from_pretrained(out).eval()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ref.state_dict()[key], rtol=0, atol=0)


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2KiB") == 2048
    assert parse_size("1.5gb") == 1_500_000_000
    assert parse_size("10") == 10
    for bad in ("", "GB", "5XB", "-1GB", 0, "0MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_read_pytorch_model_bin(tmp_path, zipfile):
    """Both torch.save formats; bf16 comes back as float32."""
    import torch
    tensors = _tensors()
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    state["bf16"] = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(CONFIG))
    torch.save(state, tmp_path / WEIGHTS_NAME, _use_new_zipfile_serialization=zipfile)
    with open_state_dict(tmp_path) as reader:
        assert set(reader) == set(tensors) | {"bf16"}
        for key, value in tensors.items():
            assert reader[key].tobytes() == value.tobytes() and reader[key].dtype == value.dtype
        np.testing.assert_array_equal(reader["bf16"], np.array([1.5, -2.25, 3.0], np.float32))
        assert reader["bf16"].dtype == np.float32
        assert reader.source("bf16") == tmp_path / WEIGHTS_NAME


def test_read_sharded_pytorch_model_bin(tmp_path):
    import torch
    tensors = _tensors()
    keys = sorted(tensors)
    files = {
        "pytorch_model-00001-of-00002.bin": keys[:3],
        "pytorch_model-00002-of-00002.bin": keys[3:],
    }
    weight_map = {}
    for file, names in files.items():
        torch.save({k: torch.from_numpy(tensors[k].copy()) for k in names}, tmp_path / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (tmp_path / WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    with open_state_dict(tmp_path) as reader:
        _assert_same(reader, tensors)
        assert reader.source(keys[4]) == tmp_path / "pytorch_model-00002-of-00002.bin"


def test_safetensors_preferred_over_bin(tmp_path):
    import torch
    out = write_checkpoint(tmp_path / "c", _tensors(0), config=CONFIG)
    torch.save({"other": torch.zeros(1)}, out / WEIGHTS_NAME)
    with open_state_dict(out) as reader:
        assert "other" not in reader


def test_bf16_safetensors_read_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.tensor([[0.5, -1.75], [3.0, 1e-3]], dtype=torch.bfloat16)
    save_file({"w": values, "b": torch.ones(2)}, str(tmp_path / SAFE_WEIGHTS_NAME))
    with open_state_dict(tmp_path) as reader:
        got = reader["w"]
        assert got.dtype == np.float32 and got.shape == (2, 2)
        np.testing.assert_array_equal(got, values.float().numpy())
        np.testing.assert_array_equal(reader["b"], np.ones(2, np.float32))


def test_truncated_shard_names_the_shard(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(), config=CONFIG, max_shard_size=300)
    shard = sorted(out.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(CheckpointError, match=shard.name):
        open_state_dict(out)


def test_index_naming_a_missing_shard(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(), config=CONFIG, max_shard_size=300)
    shard = sorted(out.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name) as info:
        open_state_dict(out)
    assert SAFE_WEIGHTS_INDEX_NAME in str(info.value)


def test_missing_weights_names_the_directory(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match=str(tmp_path)) as info:
        open_state_dict(tmp_path)
    assert SAFE_WEIGHTS_NAME in str(info.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        open_state_dict(tmp_path / "nowhere")


@pytest.mark.parametrize(("text", "match"), [("{not json", "not valid JSON"),
                                           ("[1, 2]", "JSON object"), (None, CONFIG_NAME)])
def test_bad_or_missing_config_names_the_file(tmp_path, text, match):
    if text is not None:
        (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=match) as info:
        read_config_dict(tmp_path)
    assert str(tmp_path / CONFIG_NAME) in str(info.value)


def test_unknown_key_is_a_key_error(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(), config=CONFIG)
    with open_state_dict(out) as reader:
        with pytest.raises(KeyError):
            reader["nope"]
        assert reader.get("nope") is None


def test_failed_write_leaves_nothing_behind(tmp_path):
    def tensors():
        yield "a", np.ones(3, np.float32)
        yield "b", [1.0, 2.0]  # not an array

    with pytest.raises(CheckpointError, match="'b'"):
        write_checkpoint(tmp_path / "c", tensors(), config=CONFIG)
    assert _entries(tmp_path) == []


def test_failed_save_leaves_existing_target_unchanged(tmp_path, monkeypatch):
    old = _tensors(0)
    out = write_checkpoint(tmp_path / "c", old, config=CONFIG, max_shard_size=300)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(out, _tensors(1), config={"other": 1})
    assert _entries(tmp_path) == ["c"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("exchange", [False, "raises"])
def test_failed_swap_restores_target(tmp_path, monkeypatch, exchange):
    """Without an atomic exchange (two renames), or when the exchange itself fails."""
    out = write_checkpoint(tmp_path / "c", _tensors(0), config=CONFIG)

    def no_exchange(a, b):
        if exchange == "raises":
            raise OSError("rename failed")
        return False

    monkeypatch.setattr(ckpt, "_exchange", no_exchange)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".c.tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        write_checkpoint(out, _tensors(1), config=CONFIG)
    assert _entries(tmp_path) == ["c"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_replaces_weights_and_keeps_other_files(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(0), config=CONFIG, max_shard_size=300)
    (out / "tokenizer.json").write_text("{}")
    (out / "tf_model.h5").write_bytes(b"stale")
    new = {"x": np.arange(4, dtype=np.float32)}
    write_checkpoint(out, new, config={"v": 2})
    assert _entries(out) == sorted([CONFIG_NAME, SAFE_WEIGHTS_NAME, "tokenizer.json"])
    assert read_config_dict(out) == {"v": 2}
    with open_state_dict(out) as reader:
        _assert_same(reader, new)
    assert _entries(tmp_path) == ["c"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_write_rejects_duplicates_and_files(tmp_path):
    pairs = [("a", np.zeros(1)), ("a", np.ones(1))]
    with pytest.raises(CheckpointError, match="'a'"):
        write_checkpoint(tmp_path / "c", pairs, config=CONFIG)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        write_checkpoint(tmp_path / "f", {}, config=CONFIG)
    assert _entries(tmp_path) == ["f"]


def test_non_contiguous_arrays_are_written(tmp_path):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensors = {"t": base.T, "s": base[:, ::2]}
    out = write_checkpoint(tmp_path / "c", tensors, config=CONFIG)
    with open_state_dict(out) as reader:
        np.testing.assert_array_equal(reader["t"], base.T)
        np.testing.assert_array_equal(reader["s"], base[:, ::2])


def test_reader_from_files(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(), config=CONFIG)
    reader = StateDictReader.from_files([out / SAFE_WEIGHTS_NAME])
    assert len(reader) == len(_tensors())
    assert "StateDictReader" in repr(reader)


def _fake_hub_cache(root: Path, repo: str, sha: str = "a" * 40) -> Path:
    org, name = repo.split("/")
    repo_dir = root / f"models--{org}--{name}"
    snapshot = repo_dir / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(sha)
    (snapshot / CONFIG_NAME).write_text(json.dumps(CONFIG))
    return snapshot


def test_resolve_local_directory(tmp_path):
    out = write_checkpoint(tmp_path / "c", _tensors(), config=CONFIG)
    assert resolve_checkpoint(out) == out
    assert resolve_checkpoint(str(out)) == out
    (out / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        resolve_checkpoint(out)
    assert resolve_checkpoint(out, filenames=()) == out


def test_resolve_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "no" / "such" / "dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(tmp_path / "file")


def test_resolve_hub_id_offline_from_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "some-org/tiny-bert")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint("some-org/tiny-bert").resolve() == snapshot.resolve()
    assert read_config_dict(resolve_checkpoint("some-org/tiny-bert")) == CONFIG
    # explicit cache_dir wins over the environment
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert resolve_checkpoint("some-org/tiny-bert", cache_dir=cache).resolve() == snapshot.resolve()


def test_resolve_hub_id_absent_from_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("some-org/not-downloaded")
    message = str(info.value)
    assert "'some-org/not-downloaded' is not a local directory" in message
    assert "not in the local hub cache" in message
    assert "download" in message and "local" in message


def _online(monkeypatch, tmp_path, fake):
    """Online mode with huggingface_hub.snapshot_download replaced by `fake`."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)


def test_resolve_hub_id_falls_back_to_cache_when_network_fails(tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    snapshot = _fake_hub_cache(cache, "some-org/tiny-bert")
    real = huggingface_hub.snapshot_download
    calls = []

    def fake(repo_id, *, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if not local_files_only:
            raise ConnectionError("no network")
        return real(repo_id, local_files_only=True, **kwargs)

    _online(monkeypatch, tmp_path, fake)
    resolved = resolve_checkpoint("some-org/tiny-bert", cache_dir=cache)
    assert resolved.resolve() == snapshot.resolve()
    assert calls == [False, True]


def test_online_download_fetches_bin_only_without_safetensors(tmp_path, monkeypatch):
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / CONFIG_NAME).write_text("{}")
    patterns = []

    def fake(repo_id, *, allow_patterns, **kwargs):
        patterns.append(sorted(allow_patterns))
        return str(snapshot)

    _online(monkeypatch, tmp_path, fake)
    assert resolve_checkpoint("org/only-bin") == snapshot
    assert [("*.bin" in p) for p in patterns] == [False, True]
    patterns.clear()
    (snapshot / SAFE_WEIGHTS_NAME).write_bytes(b"")
    resolve_checkpoint("org/has-safetensors")
    assert [("*.bin" in p) for p in patterns] == [False]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_gives_the_library_error_naming_the_file(case, tmp_path):
    error = case.exception(tmp_path)
    assert type(error) is case.error_class or isinstance(error, case.error_class), repr(error)
    assert case.file in str(error), str(error)
    assert not (tmp_path / MARKER).exists()  # the malicious pickle ran nothing


def test_the_malicious_pickle_is_real(tmp_path):
    """The refused .bin would run its payload if loaded unsafely: the case can fail."""
    import torch

    case = next(c for c in CASES if c.name == "bin-pickle-runs-code")
    case.exception(tmp_path)
    assert not (tmp_path / MARKER).exists()
    torch.load(tmp_path / WEIGHTS_NAME, weights_only=False)  # what encdec never does
    assert (tmp_path / MARKER).exists()


# One save in its own process. argv: target, writer id, barrier file, kill spec ("-" for none:
# "name:k" SIGKILLs the process just before the k-th call of `name` in the save), exchange
# ("1" atomic exchange, "0" the two-rename fallback).
WORKER = r"""
import os, signal, sys, time
import numpy as np
from encdec.core import checkpoint as ckpt
{SAVE}
target, ident, barrier, kill, exchange = sys.argv[1:6]
ident = int(ident)
if exchange == "0":
    ckpt._exchange = lambda a, b: False
if kill != "-":
    name, k = kill.split(":")
    owner = {"replace": ckpt.os, "rmtree": ckpt.shutil}.get(name, ckpt)
    real, calls = getattr(owner, name), [0]
    def wrapped(*args, **kwargs):
        if calls[0] == int(k):
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real(*args, **kwargs)
    setattr(owner, name, wrapped)
while barrier != "-" and not os.path.exists(barrier):
    time.sleep(0.001)
print("started", flush=True)
try:
    save(target, ident)
except ckpt.CheckpointError as e:
    print(e, flush=True)
    sys.exit(3 if "another save to that directory is in progress" in str(e) else 1)
"""


SAVE = """
def save(target, ident):
    tensors = ((f"w{i}", np.full(20_000, ident * 10 + i, np.float32)) for i in range(6))
    ckpt.write_checkpoint(target, tensors, config={"writer": ident}, max_shard_size="200KB")
"""
WORKER = WORKER.replace("{SAVE}", SAVE)
exec(SAVE, {"ckpt": ckpt, "np": np}, _namespace := {})
_save = _namespace["save"]  # the worker's save, in this process


def _worker(target: Path, ident: int, barrier: str = "-", kill: str = "-", exchange: str = "1"):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(target), str(ident), barrier,
                             kill, exchange], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _writer_of(directory: Path) -> int:
    """The one writer whose tensors and config fill `directory` (asserts nothing is mixed)."""
    ident = read_config_dict(directory)["writer"]
    with open_state_dict(directory) as reader:
        assert sorted(reader) == [f"w{i}" for i in range(6)]
        for i in range(6):
            assert (reader[f"w{i}"] == ident * 10 + i).all(), (ident, i)
    return ident


def test_concurrent_saves_leave_one_complete_checkpoint(tmp_path):
    target = tmp_path / "c"
    for round_ in range(2):
        barrier = tmp_path / f"go-{round_}"
        procs = {i: _worker(target, i, str(barrier)) for i in range(1 + 4 * round_, 5 + 4 * round_)}
        time.sleep(0.5)  # let them import and wait at the barrier
        barrier.touch()
        codes = {i: p.wait(timeout=60) for i, p in procs.items()}
        errors = {i: p.stderr.read() for i, p in procs.items() if codes[i] not in (0, 3)}
        assert not errors, errors
        winners = {i for i, c in codes.items() if c == 0}
        assert winners, codes  # one at least succeeded; the others said why they did not
        for i, p in procs.items():
            if codes[i] == 3:
                assert str(target) in p.stdout.read()
        assert _writer_of(target) in winners
        assert _entries(tmp_path) == sorted(["c", *(f"go-{r}" for r in range(round_ + 1))])


def test_a_second_save_while_one_holds_the_lock_fails_naming_the_directory(tmp_path):
    target = tmp_path / "c"
    write_checkpoint(target, _tensors(0), config=CONFIG)
    before = _snapshot(target)
    with ckpt._SaveLock(target):
        with pytest.raises(CheckpointError, match="another save to that directory is in progress"
                           ) as info:
            write_checkpoint(target, _tensors(1), config=CONFIG)
        assert str(target) in str(info.value) and f"process {os.getpid()}" in str(info.value)
    assert _snapshot(target) == before
    write_checkpoint(target, _tensors(1), config=CONFIG)  # released: the next save works
    assert _entries(tmp_path) == ["c"]


# (kill spec, exchange): just before a shard is written, the config, the copy of a kept file,
# the swap, and the removal of the old files; without an atomic exchange also just before the
# second of the two renames (the target is briefly absent: the next save restores it).
KILL_POINTS = [("save_file:1", "1"), ("_write_json:0", "1"), ("_link_or_copy:0", "1"),
               ("_exchange:0", "1"), ("rmtree:0", "1"), ("replace:4", "0"), ("rmtree:0", "0")]


def test_killed_saves_leave_the_old_or_the_new_checkpoint(tmp_path):
    target = tmp_path / "c"
    reference = tmp_path / "reference"
    _save(reference, 2)
    (reference / "tokenizer.json").write_text("{}")
    new = _snapshot(reference)
    shutil.rmtree(reference)
    outcomes = set()
    for kill, exchange in KILL_POINTS:
        shutil.rmtree(target, ignore_errors=True)
        _save(target, 1)
        (target / "tokenizer.json").write_text("{}")
        old = _snapshot(target)
        proc = _worker(target, 2, kill=kill, exchange=exchange)
        assert proc.wait(timeout=60) == -signal.SIGKILL, (kill, proc.stderr.read())
        assert target.exists() == (kill != "replace:4"), kill  # between the two renames
        with ckpt._SaveLock(target):  # what the next save does first
            ckpt._recover(target)
        state = _snapshot(target)
        assert state in (old, new), kill
        outcomes.add("old" if state == old else "new")
        assert _entries(tmp_path) == ["c"], kill  # the killed save's leftovers are gone
    assert outcomes == {"old", "new"}


def test_save_killed_at_a_random_moment(tmp_path):
    target = tmp_path / "c"
    _save(target, 1)
    old = _snapshot(target)
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = _worker(target, 2)
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        state = _snapshot(target)
        assert state == old or _writer_of(target) == 2
        _save(target, 1)
        assert _entries(tmp_path) == ["c"]
        old = _snapshot(target)


def test_stale_leftovers_are_removed_by_the_next_save(tmp_path):
    target = write_checkpoint(tmp_path / "c", _tensors(0), config=CONFIG)
    (tmp_path / ".c.tmp-dead").mkdir()
    (tmp_path / ".c.tmp-dead" / SAFE_WEIGHTS_NAME).write_bytes(b"partial")
    (tmp_path / ".c.swap-dead").mkdir()
    (tmp_path / ".c.lock").write_text("held by process 1\n")  # its holder is gone: no flock
    (tmp_path / ".other.tmp-x").mkdir()  # another target's: not ours to remove
    write_checkpoint(target, _tensors(1), config=CONFIG)
    assert _entries(tmp_path) == [".other.tmp-x", "c"]


def test_save_over_the_directory_an_open_reader_reads(tmp_path):
    old = _tensors(0)
    target = write_checkpoint(tmp_path / "c", old, config=CONFIG, max_shard_size=300)
    with open_state_dict(target) as reader:
        first = next(iter(old))
        reader[first]  # opened
        write_checkpoint(target, ((k, reader[k] * 2) for k in reader), config=CONFIG)
        for key, value in old.items():  # the reader still reads the old files
            assert reader[key].tobytes() == value.tobytes()
    with open_state_dict(target) as reader:
        for key, value in old.items():
            assert reader[key].tobytes() == (value * 2).tobytes()
    assert _entries(tmp_path) == ["c"]


def test_model_saved_over_the_directory_it_was_loaded_from(tmp_path, reference_dir):
    import torch

    from encdec.pt import EncoderDecoderModel

    directory = tmp_path / "m"
    EncoderDecoderModel.from_pretrained(reference_dir("bert2bert")).save_pretrained(directory)
    model = EncoderDecoderModel.from_pretrained(directory)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(directory)
    model.save_pretrained(directory)
    again = EncoderDecoderModel.from_pretrained(directory).state_dict()
    for key, value in before.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)
    assert _entries(tmp_path) == ["m"]
