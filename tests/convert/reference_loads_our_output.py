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

import json
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


def _composites() -> dict[str, list[str]]:
    """Every fixture and the formats the reference wrote it in (its MANIFEST.json)."""
    return {p.parent.name: json.loads(p.read_text())["formats"]
            for p in sorted(FIXTURES.glob("*/MANIFEST.json"))}


def _loader(name: str, kind: str, directory: Path):
    """() -> logits of the reference's `kind` class loaded from `directory`, on the fixture's
    batch (Flax: with the PyTorch reference's position ids, which its class does not make;
    an assembled Flax file is run in the two reference models, as it was made)."""
    import transformers as tr

    from tools.fixtures import make_reference_fixtures as ref

    def run() -> np.ndarray:
        if kind == "pt":
            return ref.pt_logits(tr.EncoderDecoderModel.from_pretrained(str(directory)).eval(),
                                 name)
        if kind == "tf":
            return ref.tf_logits(tr.TFEncoderDecoderModel.from_pretrained(str(directory)), name)
        if not ref.assembled(name):
            return ref.flax_logits(tr.FlaxEncoderDecoderModel.from_pretrained(str(directory)),
                                   name)
        from flax.serialization import msgpack_restore

        pt = tr.EncoderDecoderModel.from_pretrained(str(FIXTURES / name / "pt")).eval()
        with tempfile.TemporaryDirectory() as tmp:
            encoder, decoder = ref._flax_pair(pt, Path(tmp))
        params = msgpack_restore((directory / "flax_model.msgpack").read_bytes())
        return ref.flax_assembled_logits(encoder, decoder, params, name)

    return run


def _split_loader(name: str, kind: str, split: Path):
    import transformers as tr

    from tools.fixtures import make_reference_fixtures as ref

    cls = {"tf": tr.TFEncoderDecoderModel, "flax": tr.FlaxEncoderDecoderModel}[kind]

    def run() -> np.ndarray:
        model = cls.from_encoder_decoder_pretrained(
            str(split / "encoder"), str(split / "decoder"), encoder_from_pt=True,
            decoder_from_pt=True)
        return (ref.tf_logits if kind == "tf" else ref.flax_logits)(model, name)

    return run


def main() -> int:
    from encdec.convert.cli import main as convert
    from tools.fixtures import make_reference_fixtures as ref

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, formats in _composites().items():
            recorded = np.load(FIXTURES / name / "inputs_logits.npz")["logits"]
            checks = []
            for src_fmt in formats:
                for target in formats:
                    dst = Path(tmp) / f"{name}-{src_fmt}-to-{target}"
                    if convert([str(FIXTURES / name / src_fmt), str(dst), "--to", target,
                                "--no-verify", "-q"]) != 0:
                        failures.append(f"{dst.name}: conversion failed")
                        continue
                    checks.append((dst.name, _loader(name, target, dst)))
            split = Path(tmp) / f"{name}-split"
            if convert([str(FIXTURES / name / "pt"), str(split), "--to", "tf", "--split",
                        "--no-verify", "-q"]) != 0:
                failures.append(f"{split.name}: conversion failed")
            elif not (split / "enc_to_dec_proj.safetensors").exists():
                # (with enc_to_dec_proj the reference's split path makes it random)
                for kind in formats:
                    if kind != "pt" and not (kind == "flax" and ref.assembled(name)):
                        checks.append((f"{split.name} ({kind}, *_from_pt=True)",
                                       _split_loader(name, kind, split)))
            for label, logits in checks:
                try:
                    diff = float(np.abs(logits() - recorded).max())
                except Exception as e:  # report every failure, then exit non-zero
                    failures.append(f"{label}: {type(e).__name__}: {e}")
                    continue
                status = "OK" if diff <= BOUND else "FAIL"
                print(f"{label:<56} max |Δlogits| vs recorded {diff:.2e}  {status}")
                if diff > BOUND:
                    failures.append(f"{label}: {diff:.2e} > {BOUND}")
    for f in failures:
        print("FAILED", f)
    print("OK" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
