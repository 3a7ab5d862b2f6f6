"""Scale-out, Flax: the model trains under a `jax.sharding` mesh of 8 virtual CPU devices, the
batch split over a data axis and the weights replicated; the loss and the updated weights equal
one device's. Runs in a subprocess: the device count is fixed when jax starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess with 8 virtual CPU devices

SCRIPT = r'''
import sys
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from encdec.flax import EncoderDecoderModel
from tests.conftest import make_batch

assert len(jax.devices()) == 8, jax.devices()
b = make_batch(seed=5, batch=8)
batch = {k: jnp.asarray(b[k]) for k in ("input_ids", "attention_mask", "labels")}

def step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(lambda m: m(**batch).loss)(model)
    optimizer.update(model, grads)
    return loss

def run(sharded):
    model = EncoderDecoderModel.from_pretrained(sys.argv[1])
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    data = batch
    if sharded:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        data = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
        assert len(data["input_ids"].sharding.device_set) == 8
    loss = nnx.jit(step)(model, optimizer, data)
    kernel = model.decoder.transformer.h[0].crossattention.q_attn.kernel[...]
    return float(loss), np.asarray(kernel)

loss1, w1 = run(False)
loss8, w8 = run(True)
assert abs(loss1 - loss8) <= 1e-5, (loss1, loss8)
assert np.abs(w1 - w8).max() <= 1e-5, np.abs(w1 - w8).max()
print("OK", loss1, loss8)
'''


def test_data_parallel_mesh_of_8_cpu_devices(reference_dir):
    root = Path(__file__).resolve().parents[2]
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(reference_dir("bert2gpt2"))],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]
