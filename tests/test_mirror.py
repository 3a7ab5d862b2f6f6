"""pt, tf and flax mirror each other (STYLE.md 2 and 11): the same module files, the same
public classes and functions in each, the same public methods with the same argument names in
the same order. Framework-specific extras are allowed only where listed below, with a reason."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

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
    "pt": {"generate": {"generator"}, "*": {"device"}},
    "tf": {"__init__": {"name", "kwargs"}, "forward": {"training"}},
    "flax": {"*": {"rngs"}},
}
# Methods (class, or "*" for any -> names) only one framework has, and why.
EXTRA_METHODS = {
    "pt": {  # torch.utils.checkpoint on the backbones' layers (the reference's API)
        "EncoderDecoderModel": {"gradient_checkpointing_enable",
                                "gradient_checkpointing_disable"}},
    "tf": {"EncoderDecoderModel": {"compute_loss"},  # Keras' `fit` asks for the loss here
           "*": {"compute_mask"}},  # Keras' mask propagation hook (returns None: no masking)
    "flax": {},
}
# Module-level helpers a framework may have alone (module.name), and why; where two
# backends have one, they are compared.
EXTRA_HELPERS = {
    "pt": {"attention.Conv1D",  # GPT-2's (in, out) weight as a module; Keras/NNX kernels are
           # (in, out) already
           "params.constructing", "params.skip_init", "params.skipping_init"},  # torch builds
           # modules with a random init; these skip it when weights are loaded
    "tf": {"params.variables",  # path -> keras.Variable (torch has named_parameters)
           "params.one_token"},  # Keras creates variables on the first call
    "flax": {"params.variables",  # path -> nnx.Variable
             "params.abstract",  # nnx.eval_shape construction before loading
             "attention.default_rngs"},  # NNX modules need rngs to construct
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


def _methods(cls: type, backend: str) -> dict[str, list[str] | str]:
    """Public methods (and __init__ / the forward) defined by encdec classes in `cls`'s MRO."""
    out: dict[str, list[str] | str] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("encdec."):
            continue
        for name, obj in vars(klass).items():
            if name == FORWARD[backend]:
                name = "forward"
            elif name.startswith("_") and name != "__init__":
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
    function's signature; `public`: the package's `__all__` only, else every module's own."""
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
        for name in sorted(names):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if isinstance(obj, type):
                out[f"{mod_name}.{name}"] = _methods(obj, backend)
            elif inspect.isfunction(obj):
                out[f"{mod_name}.{name}"] = _signature(obj, backend, name)
    return out


def differences(pt: dict, theirs: dict, other: str) -> list[str]:
    """Each difference between pt's surface and another backend's, in words."""
    problems = [f"only in pt: {k}" for k in sorted(pt.keys() - theirs.keys())
                if k not in EXTRA_HELPERS["pt"]]
    problems += [f"only in {other}: {k}" for k in sorted(theirs.keys() - pt.keys())
                 if k not in EXTRA_HELPERS[other]]
    for key in sorted(pt.keys() & theirs.keys()):
        a, b = pt[key], theirs[key]
        if isinstance(a, dict) and isinstance(b, dict):
            problems += [f"{key}.{m}: only in pt" for m in sorted(a.keys() - b.keys())]
            problems += [f"{key}.{m}: only in {other}" for m in sorted(b.keys() - a.keys())]
            problems += [f"{key}.{m}: pt {a[m]} != {other} {b[m]}"
                         for m in sorted(a.keys() & b.keys()) if a[m] != b[m]]
        elif a != b:
            problems.append(f"{key}: pt {a} != {other} {b}")
    return problems


@pytest.mark.parametrize("other", ["tf", "flax"])
def test_public_api_mirrors_pt(other):
    """The exported classes: names, public methods, argument names and order."""
    problems = differences(surface("pt", True), surface(other, True), other)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)


@pytest.mark.parametrize("other", ["tf", "flax"])
def test_modules_mirror_pt(other):
    """Each module file's own classes and functions (attention, bert, gpt2, params, …)."""
    problems = differences(surface("pt", False), surface(other, False), other)
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems)
