"""`model.fit` under `tf.distribute.MirroredStrategy` on 2 logical CPUs equals one device
(DESIGN.md scale-out: the Keras models under tf.distribute strategies). A subprocess: logical
devices must be configured before TensorFlow initialises."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # MirroredStrategy in a subprocess

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from encdec.core import EncoderDecoderConfig
    from encdec.tf import EncoderDecoderModel, params

    directory = sys.argv[1]
    rng = np.random.default_rng(0)
    data = {"input_ids": rng.integers(4, 99, (4, 9)), "attention_mask": np.ones((4, 9), np.int64),
            "labels": rng.integers(4, 99, (4, 7))}  # no -100: both replicas weigh the same
    data["attention_mask"][1, -3:] = 0

    config = EncoderDecoderConfig.from_pretrained(directory)  # dropout off: deterministic
    config.encoder.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.decoder.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

    def fit(strategy):
        with strategy.scope():
            model = EncoderDecoderModel.from_pretrained(directory, config=config)
            model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
        ds = tf.data.Dataset.from_tensor_slices(data).batch(4).repeat(2)
        loss = model.fit(ds, epochs=1, verbose=0, shuffle=False).history["loss"][0]
        return model, loss

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    one, loss1 = fit(tf.distribute.get_strategy())
    two, loss2 = fit(mirrored)
    var = two.encoder.embeddings.word_embeddings.embeddings
    assert "Mirrored" in type(var.value).__name__, type(var.value)
    assert abs(loss1 - loss2) < 1e-5, (loss1, loss2)
    a, b = params.variables(one), params.variables(two)
    diff = max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a)
    assert diff < 1e-5, diff
    print("ok", loss1, loss2, diff)
    """
)


def test_mirrored_strategy_fit_equals_one_device(reference_dir):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(reference_dir("bert2gpt2"))],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout + r.stderr)[-3000:]
