"""One adapter per backend, so the parity harness runs the same checks on every pair.

Each adapter loads a checkpoint (or warm-starts from two), runs a forward or `generate` on
numpy inputs and returns numpy outputs, computes gradients of the loss for canonical
parameter names (canonical layout), and saves.
"""

from __future__ import annotations

import contextlib
import importlib

import numpy as np

from encdec.core.weights import Dialect, Param, export_state, from_dialect, leaf

OUTPUTS = ("logits", "loss", "encoder_last_hidden_state", "encoder_hidden_states",
           "decoder_hidden_states", "encoder_attentions", "decoder_attentions", "cross_attentions")


def _numpy(x):
    if isinstance(x, (tuple, list)):
        return tuple(_numpy(y) for y in x)
    if hasattr(x, "detach"):
        x = x.detach()
    return np.asarray(x)


def outputs_to_numpy(out) -> dict[str, np.ndarray | tuple]:
    return {k: _numpy(out[k]) for k in OUTPUTS if out.get(k) is not None}


class Adapter:
    """What every backend does alike (each subclass sets `module` and `inputs`)."""

    name: str
    module = None

    def inputs(self, batch):
        raise NotImplementedError

    def load(self, directory):
        return self.module.EncoderDecoderModel.from_pretrained(directory)

    def warm_start(self, encoder_dir, decoder_dir, **kwargs):
        """`from_encoder_decoder_pretrained(..., output_loading_info=True)` -> (model, info)."""
        return self.module.EncoderDecoderModel.from_encoder_decoder_pretrained(
            encoder_dir, decoder_dir, output_loading_info=True, **kwargs)

    def forward(self, model, batch, **kw):
        return outputs_to_numpy(model(**self.inputs(batch), **kw))

    def generate(self, model, input_ids, attention_mask=None, **kw) -> np.ndarray:
        """`model.generate` on numpy inputs -> numpy token ids."""
        x = self.inputs({"input_ids": input_ids})["input_ids"]
        mask = None if attention_mask is None else \
            self.inputs({"attention_mask": attention_mask})["attention_mask"]
        return _numpy(model.generate(x, mask, **kw))

    def save(self, model, directory):
        model.save_pretrained(directory)

    def state(self, model) -> dict[str, np.ndarray]:
        """Every saved weight of `model` (a composite or a backbone) under its canonical name,
        in canonical layout: what its checkpoint holds."""
        return dict(export_state(model.table(), lambda path: self.module.params.get(model, path),
                                 self.dialect))

    def variable(self, model, name: str):
        """The backend's variable object holding canonical parameter `name` (`is` tells which
        are tied), or None where the backend holds none (a tied LM head in Keras and NNX reads
        the word embeddings)."""
        return self.variables(model).get(leaf(model.table().by_name[name], self.dialect))

    @contextlib.contextmanager
    def training(self, model):
        """The model in training mode inside the block, inference mode again after it (TF
        overrides it: Keras has no mode, `training=True` is a call argument, `train_kwargs`)."""
        model.train()
        try:
            yield model
        finally:
            model.eval()

    train_kwargs: dict = {}

    def frozen(self, model, p: Param) -> bool:
        """Whether parameter `p` is marked out of training (an optimizer leaves it: pt's
        `requires_grad=False`, Keras's `trainable=False`; NNX has no such mark, a frozen table
        gets no gradient through `stop_gradient`)."""
        return False

    def param(self, model, p: Param) -> np.ndarray:
        """Parameter `p` (a table entry) of `model`, in the canonical layout."""
        params = importlib.import_module(f"{self.module.__name__}.params")
        return from_dialect(p, np.asarray(params.get(model, leaf(p, self.dialect))), self.dialect)


class PT(Adapter):
    name, dialect = "pt", Dialect.PT

    def __init__(self):
        import torch

        import encdec.pt

        self.torch, self.module = torch, encdec.pt

    def inputs(self, batch):
        return {k: self.torch.from_numpy(np.asarray(v)) for k, v in batch.items()}

    def variables(self, model):
        return dict(model.named_parameters(remove_duplicate=False))

    def forward(self, model, batch, **kw):
        with self.torch.no_grad():
            return outputs_to_numpy(model(**self.inputs(batch), **kw))

    def grads(self, model, batch, params: list[Param]):
        """(A parameter that gets no gradient, a frozen one: zeros.)"""
        model.zero_grad()
        model(**self.inputs(batch)).loss.backward()
        out = {}
        for p in params:
            w = model.get_parameter(leaf(p, self.dialect))
            g = np.zeros(w.shape, np.float32) if w.grad is None else w.grad.numpy()
            out[p.name] = from_dialect(p, g, self.dialect)
        return out

    def n_params(self, model) -> int:
        """How many distinct parameter tensors `model` holds (tied ones once)."""
        return len(list(model.parameters()))

    def frozen(self, model, p: Param) -> bool:
        return not model.get_parameter(leaf(p, self.dialect)).requires_grad


class TF(Adapter):
    name, dialect = "tf", Dialect.KERAS

    @contextlib.contextmanager
    def training(self, model):
        yield model  # Keras has no mode: `train_kwargs` passes training=True to the call

    def __init__(self):
        import tensorflow as tf

        import encdec.tf
        from encdec.tf import params

        self.tf, self.module, self.params = tf, encdec.tf, params

    train_kwargs = {"training": True}

    def inputs(self, batch):
        return {k: self.tf.constant(np.asarray(v)) for k, v in batch.items()}

    def variables(self, model):
        return self.params.variables(model)

    def grads(self, model, batch, params: list[Param]):
        variables = self.params.variables(model)
        chosen = [variables[leaf(p, self.dialect)] for p in params]
        with self.tf.GradientTape() as tape:
            loss = model(**self.inputs(batch)).loss
        grads = tape.gradient(loss, chosen)
        return {p.name: from_dialect(p, np.zeros(v.shape, np.float32) if g is None else
                                     self.tf.convert_to_tensor(g).numpy(), self.dialect)
                for p, v, g in zip(params, chosen, grads, strict=True)}

    def n_params(self, model) -> int:
        return len({id(v) for v in model.weights})

    def frozen(self, model, p: Param) -> bool:
        return not self.params.variables(model)[leaf(p, self.dialect)].trainable


class Flax(Adapter):
    name, dialect = "flax", Dialect.NNX

    def __init__(self):
        import jax.numpy as jnp
        from flax import nnx

        import encdec.flax

        self.jnp, self.nnx, self.module = jnp, nnx, encdec.flax

    def inputs(self, batch):
        return {k: self.jnp.asarray(np.asarray(v)) for k, v in batch.items()}

    def variable(self, model, name: str):
        node = model  # by attributes: a Variable shared by two paths is in the state once
        for part in leaf(model.table().by_name[name], self.dialect).split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part, None)
        return node

    def grads(self, model, batch, params: list[Param]):
        from encdec.flax.params import variables

        inputs = self.inputs(batch)
        grads = self.nnx.grad(lambda m: m(**inputs).loss)(model)
        flat = {".".join(str(k) for k in path): np.asarray(v[...])
                for path, v in self.nnx.to_flat_state(grads)}
        # a Variable shared by two paths (tie_encoder_decoder) is in the state once, under
        # one of them: find each parameter's Variable by walking the module, then its path
        path_of = {id(var): path for path, var in variables(model).items()}
        out = {}
        for p in params:
            node = model
            for part in leaf(p, self.dialect).split("."):
                node = node[int(part)] if part.isdigit() else getattr(node, part)
            out[p.name] = from_dialect(p, flat[path_of[id(node)]], self.dialect)
        return out

    def n_params(self, model) -> int:
        return len(self.nnx.to_flat_state(self.nnx.state(model, self.nnx.Param)))

ADAPTERS = {"pt": PT, "tf": TF, "flax": Flax}
