"""Check that the reference's own classes (transformers 4.57, the last with TF and Flax
EncoderDecoder models) load what `encdec-convert` writes, and reproduce the fixtures' logits.

Not a pytest module (transformers 5 has no TF/Flax classes): run it in an environment with
transformers 4.57, tensorflow-cpu + tf-keras 2.19 and flax, e.g. the nox session `reference`::

    python tests/convert/reference_loads_our_output.py

Conversions run with --no-verify (the main test suite verifies them with encdec's backends;
here no encdec backend is imported, so tf-keras and Keras 3 never meet in one process).
Exits non-zero on any failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # transformers' TF models need tf-keras
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
FIXTURES = REPO / "tests" / "fixtures" / "reference"
BOUND = 1e-5
KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def _logits(model, data, kind: str) -> np.ndarray:
    if kind == "pt":
        import torch

        with torch.no_grad():
            return model(**{k: torch.from_numpy(data[k]) for k in KEYS}).logits.numpy()
    if kind == "flax":
        return np.asarray(model(**{k: data[k].astype(np.int32) for k in KEYS}).logits)
    return np.asarray(model(**{k: data[k] for k in KEYS}, training=False).logits)


def main() -> int:
    import transformers as tr

    from tools.convert.cli import main as convert

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("bert2bert", "bert2gpt2"):
            data = dict(np.load(FIXTURES / name / "inputs_logits.npz"))
            checks = []
            for src_fmt in ("pt", "tf", "flax"):
                src = FIXTURES / name / src_fmt
                for target, cls in (("pt", tr.EncoderDecoderModel),
                                    ("tf", tr.TFEncoderDecoderModel),
                                    ("flax", tr.FlaxEncoderDecoderModel)):
                    dst = Path(tmp) / f"{name}-{src_fmt}-to-{target}"
                    if convert([str(src), str(dst), "--to", target, "--no-verify", "-q"]) != 0:
                        failures.append(f"{dst.name}: conversion failed")
                        continue
                    checks.append((dst.name, lambda c=cls, d=dst: c.from_pretrained(str(d)),
                                   target))
            split = Path(tmp) / f"{name}-split"
            if convert([str(FIXTURES / name / "pt"), str(split), "--to", "tf", "--split",
                        "--no-verify", "-q"]) != 0:
                failures.append(f"{split.name}: conversion failed")
            elif name == "bert2bert":  # with enc_to_dec_proj the reference's split path is random
                for kind, cls in (("tf", tr.TFEncoderDecoderModel),
                                  ("flax", tr.FlaxEncoderDecoderModel)):
                    checks.append((f"{split.name} ({cls.__name__}, *_from_pt=True)",
                                   lambda c=cls, s=split: c.from_encoder_decoder_pretrained(
                                       str(s / "encoder"), str(s / "decoder"),
                                       encoder_from_pt=True, decoder_from_pt=True), kind))
            for label, load, kind in checks:
                try:
                    model = load()
                    if kind == "pt":
                        model.eval()
                    diff = float(np.abs(_logits(model, data, kind) - data["logits"]).max())
                except Exception as e:  # report every failure, then exit non-zero
                    failures.append(f"{label}: {type(e).__name__}: {e}")
                    continue
                status = "OK" if diff <= BOUND else "FAIL"
                print(f"{label:<48} max |Δlogits| vs recorded {diff:.2e}  {status}")
                if diff > BOUND:
                    failures.append(f"{label}: {diff:.2e} > {BOUND}")
    for f in failures:
        print("FAILED", f)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
