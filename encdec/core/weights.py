"""The weight-name table: every parameter of every architecture, as data.

Canonical names are the reference's PyTorch state-dict names (`encoder.encoder.layer.0.
attention.self.query.weight`, `decoder.transformer.h.0.crossattention.q_attn.weight`, …) and
canonical layouts are PyTorch's. Each backend derives its own leaf name and layout from a
parameter's `Role` (`leaf`, `to_dialect`, `from_dialect`); the same table drives loading,
saving, missing/unexpected/shape reports, tied and ignored keys, and the converter. Each
family's table (which parameters a model of that family has) is declared in the registry, from
the building blocks here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .checkpoint import CheckpointError
from .config import EncoderDecoderConfig


class Role(Enum):
    LINEAR = "linear"  # torch.nn.Linear weight, (out, in)
    CONV1D = "conv1d"  # GPT-2 Conv1D weight, already (in, out)
    EMBEDDING = "embedding"  # (num, dim)
    NORM = "norm"  # LayerNorm weight
    NORM_BIAS = "norm_bias"  # LayerNorm bias
    BIAS = "bias"  # any other bias


class Dialect(Enum):
    PT = "pt"  # torch modules: canonical names and layouts
    KERAS = "keras"  # Dense kernel/bias, LayerNormalization gamma/beta, Embedding embeddings
    NNX = "nnx"  # flax.nnx: Linear kernel/bias, LayerNorm scale/bias, Embed embedding


# (leaf name, transpose?) for the `.weight` / `.bias` leaf of each role, per dialect
_LEAVES: dict[Dialect, dict[Role, tuple[str, bool]]] = {
    Dialect.PT: {r: ("bias" if r in (Role.BIAS, Role.NORM_BIAS) else "weight", False)
                 for r in Role},
    Dialect.KERAS: {Role.LINEAR: ("kernel", True), Role.CONV1D: ("kernel", False),
                    Role.EMBEDDING: ("embeddings", False), Role.NORM: ("gamma", False),
                    Role.NORM_BIAS: ("beta", False), Role.BIAS: ("bias", False)},
    Dialect.NNX: {Role.LINEAR: ("kernel", True), Role.CONV1D: ("kernel", False),
                  Role.EMBEDDING: ("embedding", False), Role.NORM: ("scale", False),
                  Role.NORM_BIAS: ("bias", False), Role.BIAS: ("bias", False)},
}


@dataclass(frozen=True)
class Param:
    """A parameter: canonical name, canonical (PyTorch) shape, role; a tied one names its source.

    A tied parameter shares its source's storage. It is left out of checkpoints (as the
    reference does for LM heads) unless `stored`, as for `tie_encoder_decoder`, whose decoder
    copies the reference writes out in full.
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    tied_to: str | None = None
    stored: bool = False


def leaf_rule(role: Role, dialect: Dialect) -> tuple[str, bool]:
    """(leaf name, transposed?) of a role's `.weight` / `.bias` leaf in `dialect`."""
    return _LEAVES[dialect][role]


def leaf(param: Param, dialect: Dialect) -> str:
    """The parameter's path in `dialect` (dotted, attribute names as in the canonical name)."""
    stem, _, _ = param.name.rpartition(".")
    return f"{stem}.{_LEAVES[dialect][param.role][0]}"


def to_dialect(param: Param, array: np.ndarray, dialect: Dialect) -> np.ndarray:
    """Canonical layout -> `dialect` layout."""
    return array.T if _LEAVES[dialect][param.role][1] else array


def from_dialect(param: Param, array: np.ndarray, dialect: Dialect) -> np.ndarray:
    """`dialect` layout -> canonical layout."""
    return array.T if _LEAVES[dialect][param.role][1] else array


@dataclass(frozen=True)
class Table:
    """All parameters of one model class, plus the checkpoint keys it knows how to skip.

    `prefix` is the base-model prefix of a head model (`bert.`, `transformer.`): base
    checkpoints without it load into the head model. `heads` are key patterns of heads that
    a base model drops when it reads a head model's checkpoint (reported, never silent).
    """

    params: tuple[Param, ...]
    ignored: tuple[str, ...] = ()  # regexes: buffers that old checkpoints carry
    prefix: str = ""
    base_prefixes: tuple[str, ...] = ()  # prefixes a base model strips (`bert.`)
    heads: tuple[str, ...] = ()  # regexes: head keys a base model drops
    # (regex, name): a checkpoint key that stands in for parameter `name` when the checkpoint
    # lacks `name` itself (a seq2seq save stores the shared embedding once, `model.shared.weight`)
    aliases: tuple[tuple[str, str], ...] = ()
    by_name: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})

    @property
    def owned(self) -> tuple[Param, ...]:
        """Parameters that hold their own storage (tied ones excluded)."""
        return tuple(p for p in self.params if p.tied_to is None)

    @property
    def saved(self) -> tuple[Param, ...]:
        """Parameters a checkpoint holds: the owned ones and the `stored` tied ones."""
        return tuple(p for p in self.params if p.tied_to is None or p.stored)

    def with_prefix(self, prefix: str) -> Table:
        return Table(
            tuple(Param(prefix + p.name, p.shape, p.role, p.tied_to and prefix + p.tied_to,
                        p.stored) for p in self.params),
            ignored=tuple(_prefixed(prefix, r) for r in self.ignored))


def _prefixed(prefix: str, regex: str) -> str:
    return re.escape(prefix) + regex


# --- building blocks of the tables (each family's table is in the registry) ----------------

def norm(name: str, h: int) -> list[Param]:
    """A LayerNorm's weight and bias."""
    return [Param(f"{name}.weight", (h,), Role.NORM), Param(f"{name}.bias", (h,), Role.NORM_BIAS)]


def linear(name: str, n_in: int, n_out: int, role: Role = Role.LINEAR) -> list[Param]:
    """A Linear's (or GPT-2 Conv1D's) weight and bias."""
    shape = (n_out, n_in) if role is Role.LINEAR else (n_in, n_out)
    return [Param(f"{name}.weight", shape, role), Param(f"{name}.bias", (n_out,), Role.BIAS)]


def has_enc_to_dec_proj(c: EncoderDecoderConfig) -> bool:
    """The composite projects encoder states to the decoder's width (sizes differ)."""
    return c.encoder.hidden_size != c.decoder.hidden_size


# --- matching checkpoint keys to the table ------------------------------------------------

_LEGACY = ((re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias"))  # old BERT


@dataclass
class Match:
    """How a checkpoint's keys map onto a table."""

    keys: dict[str, str]  # canonical name -> checkpoint key
    missing: list[str]  # owned params the checkpoint lacks (+ tied ones whose source it lacks)
    unexpected: list[str]  # checkpoint keys nothing claims
    dropped: list[str]  # head keys a base model dropped (reported)
    ignored: list[str]  # buffers and tied copies skipped
    aliased: list[tuple[str, str]] = field(default_factory=list)  # (name, key) via an alias


def match_keys(table: Table, keys: Iterable[str]) -> Match:
    """Map checkpoint keys onto `table`: prefix added or stripped, legacy LayerNorm names."""
    ignored_re = re.compile("|".join(f"(?:{r})" for r in table.ignored) or "(?!)")
    heads_re = re.compile("|".join(f"(?:{r})" for r in table.heads) or "(?!)")
    out = Match({}, [], [], [], [])
    stored_copies: dict[str, str] = {}  # source name -> the key of a stored tied copy
    for key in keys:
        name = key
        for pat, rep in _LEGACY:
            name = pat.sub(rep, name)
        for bp in table.base_prefixes:
            name = name.removeprefix(bp)
        names = [name] + ([table.prefix + name] if table.prefix and
                          not name.startswith(table.prefix) else [])
        p = next((table.by_name[n] for n in names if n in table.by_name), None)
        if p is not None and p.tied_to is not None and p.stored:
            stored_copies[p.tied_to] = key
        if p is not None and p.tied_to is None:
            if p.name in out.keys:
                raise CheckpointError(f"checkpoint holds {p.name!r} twice: {out.keys[p.name]!r} "
                                      f"and {key!r}")
            out.keys[p.name] = key
        elif p is not None or any(ignored_re.fullmatch(n) for n in names):
            out.ignored.append(key)
        elif heads_re.fullmatch(name):
            out.dropped.append(key)
        else:
            out.unexpected.append(key)
    for regex, name in table.aliases:
        stand_in = next((k for k in out.dropped + out.unexpected if re.fullmatch(regex, k)), None)
        if name not in out.keys and stand_in is not None:
            out.keys[name] = stand_in
            out.aliased.append((name, stand_in))
            for found in (out.dropped, out.unexpected):
                if stand_in in found:
                    found.remove(stand_in)
    # transformers 4.x saved a tied encoder-decoder's shared tensors once, under the decoder's
    # names (its encoder modules were tied to the decoder's): they stand in for the encoder's
    for name, key in stored_copies.items():
        if name not in out.keys:
            out.keys[name] = key
            out.ignored.remove(key)
    absent = {p.name for p in table.owned if p.name not in out.keys}
    # as the reference, a tied parameter whose source is absent is reported as well
    out.missing = [p.name for p in table.params if p.name in absent or p.tied_to in absent]
    return out


# --- loading and exporting through the table ----------------------------------------------

@dataclass
class LoadReport:
    """What a load did; `missing` are the weights initialised randomly (shown to the user)."""

    missing: list[str]
    dropped: list[str]
    ignored: list[str]
    aliased: list[tuple[str, str]] = field(default_factory=list)  # (weight, the key it came from)

    def summary(self, what: str) -> str:
        lines = []
        if self.aliased:
            lines.append(f"Weights of {what} taken from another checkpoint key (with the weights "
                         "tied to them): " + ", ".join(f"{n} <- {k}" for n, k in self.aliased))
        if self.missing:
            lines.append(f"Some weights of {what} were not in the checkpoint and are newly "
                         f"initialized: {self.missing}")
        if self.dropped:
            lines.append(f"Weights of {what} not used (heads the model has no use for): "
                         f"{self.dropped}")
        return "\n".join(lines)


def load_state(table: Table, state: Mapping[str, np.ndarray], dialect: Dialect,
               assign: Callable[[str, np.ndarray], None], *, strict: bool = True,
               source: object = "checkpoint") -> LoadReport:
    """Read every owned parameter of `table` from `state` into a backend, one tensor at a time.

    `assign(path, array)` receives the dialect's path (`leaf`) and layout. Unexpected keys and
    shape mismatches always raise; missing keys raise when `strict`, else are reported.
    """
    m = match_keys(table, state.keys())
    if m.unexpected:
        raise CheckpointError(f"{source}: unexpected keys not used by the model: "
                              + _few(sorted(m.unexpected)))
    if strict and m.missing:
        raise CheckpointError(f"{source}: missing weights: " + _few(m.missing))
    for name, key in m.keys.items():
        p = table.by_name[name]
        array = state[key]
        if tuple(array.shape) != p.shape:
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(array.shape)}, the model "
                                  f"expects {p.shape} for {name!r}")
        assign(leaf(p, dialect), to_dialect(p, array, dialect))
    return LoadReport(m.missing, m.dropped, m.ignored, m.aliased)


def _few(names: list[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (f" … ({len(names) - n} more)" if len(names) > n else "")


def export_state(table: Table, get: Callable[[str], np.ndarray],
                 dialect: Dialect) -> Iterator[tuple[str, np.ndarray]]:
    """Canonical (name, array) for every saved parameter, read lazily through `get(path)`."""
    for p in table.saved:
        src = table.by_name[p.tied_to] if p.tied_to else p
        array = np.ascontiguousarray(from_dialect(p, np.asarray(get(leaf(src, dialect))), dialect))
        if array.shape != p.shape:
            raise CheckpointError(f"{p.name}: backend holds shape {array.shape}, "
                                  f"the table says {p.shape}")
        yield p.name, array
