"""Coverage-guided fuzzing (atheris / libFuzzer) of every reader in tests/fuzz/readers.py.

    pip install -e ".[fuzz]"
    python tests/fuzz/fuzz_readers.py -max_total_time=600 -rss_limit_mb=4096

The first input byte picks the reader (safetensors, index, config, model config, generation
config, h5, msgpack), the rest is the file. A finding is any outcome but the library's own
error naming the file (or data no larger than the file): another exception, a crash, a hang
(-timeout, default 1200 s per input; pass e.g. -timeout=10), or memory over -rss_limit_mb.
Valid files of every reader seed the corpus (a corpus directory given on the command line is
used as well). Other libFuzzer flags pass through (-runs=N, -jobs=N, -dict=…).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["encdec"]):
    from tests.fuzz.readers import TARGETS, run, seeds

NAMES = sorted(TARGETS)


def one_input(data: bytes) -> None:
    if not data:
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(NAMES[data[0] % len(NAMES)], data[1:], Path(tmp))


def main() -> None:
    corpus = Path(tempfile.mkdtemp(prefix="encdec-fuzz-corpus-"))
    with tempfile.TemporaryDirectory() as tmp:
        for target, blobs in seeds(Path(tmp)).items():
            for k, blob in enumerate(blobs):
                (corpus / f"{target}-{k}").write_bytes(bytes([NAMES.index(target)]) + blob)
    # the seeds go last: a corpus directory given first receives the new inputs
    args = [*sys.argv, str(corpus)]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
