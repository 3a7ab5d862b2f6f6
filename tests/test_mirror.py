"""pt, tf and flax mirror each other (STYLE.md 2 and 11): the same module files, the same
public classes and functions in each, the same public methods with the same argument names in
the same order; in the modules every family shares (`layers`, `base`) the private helpers too.
Framework-specific extras are allowed only where listed below, with a reason. Two behaviours
that once drifted are checked by running them: the activation tables (core's list, the
reference's numerics) and when a layer cross-attends (only given encoder states)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

from encdec.core.config import ACTIVATIONS, BertConfig

BACKENDS = ("pt", "tf", "flax")
# The forward pass is named by each framework: nn.Module.forward, keras.Model.call,
# nnx.Module.__call__; compared as "forward".
FORWARD = {"pt": "forward", "tf": "call", "flax": "__call__"}
# The reference's backend-prefixed names of the composite, kept as aliases for users moving
# from its TF / Flax classes.
ALIASES = {"tf": {"TFEncoderDecoderModel"}, "flax": {"FlaxEncoderDecoderModel"}}
# Arguments a framework adds (method name, or "*" for any -> names): Keras layers take `name`
# and base-layer `kwargs` in __init__ and `training` in call; NNX modules take `rngs`; torch
# samplers take a `torch.Generator`.
EXTRA_ARGS = {
    "pt": {"generate": {"generator"}, "*": {"device"},
           # the eager loop builds the cross mask once per mask tensor (one host check), kept
           # in a `Derived`; the compiled loops build it inside the program
           "step_masks": {"memo"}},
    "tf": {"__init__": {"name", "kwargs"}, "forward": {"training"},
           "_out": {"training"}},  # Keras passes `training` down to its dropout
    "flax": {"*": {"rngs"}},
}
# Methods (class, or "*" for any -> names) only one framework has, and why.
EXTRA_METHODS = {
    "pt": {  # torch.utils.checkpoint on the backbones' layers (the reference's API)
        "EncoderDecoderModel": {"gradient_checkpointing_enable",
                                "gradient_checkpointing_disable"},
        # the eager decoding step's one q|k|v matmul over weights concatenated once (the
        # compiled loops let XLA fuse the three projections)
        "Attention": {"_qkv_weights"}},
    "tf": {"EncoderDecoderModel": {"compute_loss"},  # Keras' `fit` asks for the loss here
           # a tied head as a 2-D matmul: XLA CPU copied the table transposed per einsum call
           "LMDecoder": {"tied_logits"},
           # Keras' mask propagation hook (returns None: no masking); Keras' train-step
           # builder, overridden to build the optimizer before the first trace (base.Model)
           "*": {"compute_mask", "make_train_function"}},
    "flax": {},
}
# Module-level helpers a framework may have alone (module.name), and why; where two
# backends have one, they are compared.
# Keras / NNX layer builders with the reference's init (torch has nn.Linear, nn.Embedding,
# nn.LayerNorm, F.cross_entropy; a bare nn.Module holds named sublayers): not compared, their
# arguments follow each framework (Keras layers infer their input size and take a `name`).
BUILDERS = {"layers.dense", "layers.embed", "layers.layer_norm"}
_KERAS_NNX_BUILDERS = {*BUILDERS,
                       "layers.LMDecoder"}  # a vocabulary projection: torch's nn.Linear
EXTRA_HELPERS = {
    "pt": {"layers.Conv1D",  # GPT-2's (in, out) weight as a module; Keras/NNX kernels are
           # (in, out) already
           "layers.Derived",  # a tensor derived from parameters, rebuilt when they change
           # in place (torch's eager step; the compiled loops derive inside the program)
           "params.constructing", "params.skip_init", "params.skipping_init",  # torch builds
           # modules with a random init; these skip it when weights are loaded
           "params.torch_dtype",  # dtype name -> torch.dtype (Keras takes the name)
           "params.default_dtype"},  # weights created in the dtype to load in (NNX: `cast`)
    "tf": {"params.variables",  # path -> keras.Variable (torch has named_parameters)
           "base.Model",  # keras.Model whose first fit traces the train step once
           "params.one_token",  # Keras creates variables on the first call
           "params.constructing", "params.skip_init", "params.skipping_init",  # as torch
           "params.default_dtype",  # variables created in the dtype to load in, as torch
           "layers.Block",  # a Keras base layer taking our attention `mask` argument
           # without Keras' own mask propagation
           "layers.attend_cached",  # XLA loops read the static cache before writing it,
           # so the compiled loop updates it in place (pt's eager loop writes in place)
           "layers.Embedding", "layers._take_rows",  # Keras' Embedding with a dense table
           # gradient, as torch's and JAX's (TF's own is IndexedSlices, which Keras' Adam steps
           # differently)
           "layers.Dense", "layers.add_bias",  # a bias added as x - (-bias): TF's XLA
           # fuses `1-row dot + add` into a slower gemv kernel (JAX's keeps the dot plain)
           *_KERAS_NNX_BUILDERS},
    "flax": {"params.variables",  # path -> nnx.Variable
             "params.abstract",  # nnx.eval_shape construction before loading
             "params.cast", "params.jax_dtype",  # parameters cast after the abstract build
             # (torch and Keras create them in the dtype: `default_dtype`)
             "layers.default_rngs",  # NNX modules need rngs to construct
             "layers.attend_cached",  # as tf's (compared with it)
             *_KERAS_NNX_BUILDERS},
}

# Signatures that differ between the eager loop (pt) and the XLA-compiled ones (tf, flax), and
# why; tf and flax are still compared with each other.
EAGER_VS_COMPILED = {
    # XLA needs static shapes: the compiled loops pass their fixed-size id buffer and its
    # current length, pt the ids so far
    "generation.apply_processors",
}


def _signature(obj, backend: str, name: str) -> list[str] | str:
    """Argument names in order (framework extras left out), or "property"."""
    if isinstance(obj, property):
        return "property"
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    try:
        names = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return type(obj).__name__
    extra = EXTRA_ARGS[backend].get(name, set()) | EXTRA_ARGS[backend].get("*", set())
    return [n for n in names if n not in extra | {"self", "cls"}]


# The modules every family shares: their private helpers are compared too (the same attention
# internals, masks and caches in every backend), not only their public names.
SHARED_MODULES = {"layers", "base"}
# What the shared modules hold by design in every backend (STYLE.md 3: one `Attention`, cache
# handling in one place): the cache type, the loss, the bases a family file builds on.
SHARED_BY_DESIGN = ("layers.Attention", "layers.Mask", "layers.Past", "layers.split_past",
                    "layers.step_masks", "layers.causal_mask", "layers.padding_mask",
                    "layers.ACTIVATIONS", "layers.cross_entropy", "layers.causal_lm_loss",
                    "layers.Container", "base.PretrainedModel", "base.CausalLM")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _methods(cls: type, backend: str, private: bool = False) -> dict[str, list[str] | str]:
    """Public methods (and __init__ / the forward) defined by encdec classes in `cls`'s MRO;
    with `private`, the classes' own private ones too (`_heads`, not `__repr__`)."""
    out: dict[str, list[str] | str] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("encdec."):
            continue
        for name, obj in vars(klass).items():
            if name == FORWARD[backend]:
                name = "forward"
            elif name.startswith("_") and name != "__init__" and \
                    not (private and _private(name)):
                continue
            if name in out or isinstance(obj, type) or \
                    not (callable(obj) or isinstance(obj, (property, classmethod, staticmethod))):
                continue
            extra = EXTRA_METHODS[backend]
            if name not in extra.get(cls.__name__, set()) | extra.get("*", set()):
                out[name] = _signature(obj, backend, name)
    return out


def surface(backend: str, public: bool) -> dict[str, object]:
    """What the mirror compares: `module.name` -> a public class's methods and signatures, or a
    function's signature; `public`: the package's `__all__` only, else every module's own (and,
    in `SHARED_MODULES`, the private ones)."""
    package = importlib.import_module(f"encdec.{backend}")
    modules = {"__init__": package}
    if not public:
        modules = {info.name: importlib.import_module(f"encdec.{backend}.{info.name}")
                   for info in pkgutil.iter_modules(package.__path__)}
    out: dict[str, object] = {}
    for mod_name, module in modules.items():
        names = set(getattr(module, "__all__", None) or
                    [n for n, o in vars(module).items() if getattr(o, "__module__", None)
                     == module.__name__]) - ALIASES.get(backend, set())
        private = not public and mod_name in SHARED_MODULES
        for name in sorted(names):
            if name.startswith("_") and not (private and _private(name)):
                continue
            obj = getattr(module, name)
            if isinstance(obj, type):
                out[f"{mod_name}.{name}"] = _methods(obj, backend, private)
            elif inspect.isfunction(obj):
                out[f"{mod_name}.{name}"] = _signature(obj, backend, name)
    return out


def differences(x: str, y: str, public: bool) -> list[str]:
    """Each difference between backend x's surface and backend y's, in words."""
    sx, sy = surface(x, public), surface(y, public)
    problems = [f"only in {x}: {k}" for k in sorted(sx.keys() - sy.keys())
                if k not in EXTRA_HELPERS[x]]
    problems += [f"only in {y}: {k}" for k in sorted(sy.keys() - sx.keys())
                 if k not in EXTRA_HELPERS[y]]
    skipped = BUILDERS | (EAGER_VS_COMPILED if "pt" in (x, y) else set())
    for key in sorted(sx.keys() & sy.keys() - skipped):
        a, b = sx[key], sy[key]
        if isinstance(a, dict) and isinstance(b, dict):
            problems += [f"{key}.{m}: only in {x}" for m in sorted(a.keys() - b.keys())]
            problems += [f"{key}.{m}: only in {y}" for m in sorted(b.keys() - a.keys())]
            problems += [f"{key}.{m}: {x} {a[m]} != {y} {b[m]}"
                         for m in sorted(a.keys() & b.keys()) if a[m] != b[m]]
        elif a != b:
            problems.append(f"{key}: {x} {a} != {y} {b}")
    return problems


PAIRS = [("pt", "tf"), ("pt", "flax"), ("tf", "flax")]


@pytest.mark.parametrize("x, y", PAIRS)
def test_public_api_mirrors(x, y):
    """The exported classes: names, public methods, argument names and order."""
    problems = differences(x, y, public=True)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)


@pytest.mark.parametrize("x, y", PAIRS)
def test_modules_mirror(x, y):
    """Each module file's own classes and functions (layers, bert, gpt2, params, …), with the
    private helpers of the shared modules."""
    problems = differences(x, y, public=False)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_modules_hold_what_families_share(backend):
    """The cache type, the losses and the bases live in `layers` / `base` (a family file
    imports them from there, never from another family's file)."""
    missing = [name for name in SHARED_BY_DESIGN
               if not hasattr(importlib.import_module(f"encdec.{backend}.{name.split('.')[0]}"),
                              name.split(".")[1])]
    assert not missing, f"{backend} lacks {missing}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_table_is_cores_list(backend):
    """Every backend implements exactly the activations a config accepts: no fewer (a config
    that validates must build) and no more (an entry no config can reach)."""
    table = importlib.import_module(f"encdec.{backend}.layers").ACTIVATIONS
    assert tuple(table) == ACTIVATIONS


def _to_numpy(x) -> np.ndarray:
    return np.asarray(x.detach() if hasattr(x, "detach") else x)


def _array(backend: str, x: np.ndarray):
    """A numpy array as `backend`'s tensor."""
    if backend == "pt":
        import torch

        return torch.from_numpy(x)
    if backend == "tf":
        import tensorflow as tf

        return tf.constant(x)
    import jax.numpy as jnp

    return jnp.asarray(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_against_hf_activation_numerics(backend):
    """Each name in the table computes the reference's function (transformers' `ACT2FN`)."""
    import torch
    from transformers.activations import ACT2FN

    table = importlib.import_module(f"encdec.{backend}.layers").ACTIVATIONS
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    for name in ACTIVATIONS:
        ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        got = _to_numpy(table[name](_array(backend, x)))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_cache_without_encoder_states_does_not_cross_attend(backend):
    """As the reference's `BertLayer` (`if self.is_decoder and encoder_hidden_states is not
    None`): a layer cross-attends only when given encoder states. Handed a legacy cache with
    cross-attention keys/values but no encoder states, a decoder runs self-attention alone:
    the same output as with the self-attention cache only, and a cache without cross entries."""
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, is_decoder=True,
                        add_cross_attention=True)
    model = importlib.import_module(f"encdec.{backend}.bert").BertModel(config)
    if backend == "pt":
        model.eval()  # dropout off (Keras' call and NNX modules are built in inference mode)
    rng = np.random.default_rng(0)
    ids = _array(backend, rng.integers(1, 99, size=(2, 4)).astype(np.int32))
    new = _array(backend, rng.integers(1, 99, size=(2, 1)).astype(np.int32))
    states = _array(backend, rng.normal(size=(2, 5, 32)).astype(np.float32))
    past = model(input_ids=ids, encoder_hidden_states=states, use_cache=True).past_key_values
    assert all(len(layer) == 4 for layer in past)  # (k, v, cross k, cross v)
    with_cross = model(input_ids=new, past_key_values=past, use_cache=True)
    self_only = model(input_ids=new, past_key_values=tuple(layer[:2] for layer in past),
                      use_cache=True)
    np.testing.assert_array_equal(_to_numpy(with_cross.last_hidden_state),
                                  _to_numpy(self_only.last_hidden_state))
    assert all(len(layer) == 2 for layer in with_cross.past_key_values)
