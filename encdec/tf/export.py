"""TensorFlow SavedModel export of a TensorFlow `EncoderDecoderModel`.

The artefact is a `tf.saved_model.save` of a `tf.Module` holding the model's weights as
variables and one serving signature, `serving_default(input_ids, attention_mask)` (int32,
dynamic batch and length) -> `{"tokens": (batch * num_return_sequences, length) int32}`. It
runs encdec's own XLA-compiled greedy or beam-search program (`encdec.tf.generation._run`: the
encoder once, fixed-size caches, a `tf.while_loop` over the decoding steps) with the generation
settings fixed at export time.

Static shapes inside, dynamic outside: the source is padded (masked out) to the smallest of
the export's source buckets (16, 32, 64, ... up to the encoder's position limit: one traced
program per bucket, compiled on first use), and the examples of a batch run one after another
through the batch-1 program, their rows then cropped together to the longest generated length,
as `generate` crops a batch. Per-example decoding gives the batch's tokens: greedy rows are
independent, and a beam-search example that stops early in a batch only freezes its finished
hypotheses while the others run on.

Next to the SavedModel, `export` writes `run.py` (numpy + tensorflow only, never encdec: it
checks the files' sha256 from `export.json`, validates the inputs and runs the signature) and
`export.json` (see `encdec.export`). `run_exported` runs that script in a fresh process.
"""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from encdec.core import generation as gen
from encdec.core.registry import max_positions
from encdec.core.validation import check_positions
from encdec.export import run_script, runner_script, write_manifest

from . import generation as tf_generation

SIGNATURE = "serving_default"
INPUTS = {"input_ids": "int32", "attention_mask": "int32"}
OUTPUT = "tokens"


class _Exported(tf.Module):
    """The weights (as variables) and the serving function of one export."""

    def __init__(self, model: Any, p: gen.GenerationPlan, source_length: int):
        super().__init__(name="encdec_export")
        # the underlying tf.Variables: tracked here, saved once, captured by the program
        self.weights = [getattr(v, "value", v) for v in model.weights]
        program = tf.function(functools.partial(tf_generation._run, weakref.ref(model),
                                                gen.static_key(p)), jit_compile=True,
                              autograph=False)
        self._generate = _serving_function(program, p, source_length)


def _serving_function(program: Any, p: gen.GenerationPlan, source_length: int) -> Any:
    r, length = p.num_return_sequences, p.max_length
    pad = p.pad_token_id or 0  # what `generate` pads the source with (masked out)
    seed = tf.constant([0, 0], tf.int64)  # unused: sampling is not exported

    def one(ids: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(source_length,) ids and mask of one example -> its (r, length) rows, padded, and
        how many columns of them were generated (start token included)."""
        out = program(ids[None], mask[None], seed)
        if p.is_beam:  # `gen.beam_finalize` for one example
            rows = out["sequences"][0, :r]
            used = tf.reduce_max(tf.reduce_sum(
                tf.cast(out["beam_indices"][0, :r] != -1, tf.int32), -1))
            return rows, used + gen.PROMPT_LENGTH
        return out["sequences"], out["cur_len"]

    buckets = _source_buckets(source_length)

    def run_bucket(input_ids: tf.Tensor, attention_mask: tf.Tensor, bucket: int) -> tf.Tensor:
        """Every example through the program compiled for source length `bucket`."""
        batch, n = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        extra = [[0, 0], [0, tf.maximum(bucket - n, 0)]]
        ids = tf.reshape(tf.pad(input_ids, extra, constant_values=pad), [-1, bucket])
        mask = tf.reshape(tf.pad(attention_mask, extra), [-1, bucket])

        def body(i, rows, used):
            seqs, n_used = one(ids[i], mask[i])
            return i + 1, rows.write(i, tf.cast(seqs, tf.int32)), used.write(i, n_used)

        rows = tf.TensorArray(tf.int32, size=batch, element_shape=[r, length])
        used = tf.TensorArray(tf.int32, size=batch, element_shape=[])
        _, rows, used = tf.while_loop(lambda i, *_: i < batch, body, (0, rows, used))
        crop = tf.maximum(tf.reduce_max(used.stack()), gen.PROMPT_LENGTH)
        return tf.reshape(rows.stack(), [-1, length])[:, :crop]

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                  tf.TensorSpec([None, None], tf.int32, name="attention_mask")])
    def serve(input_ids: tf.Tensor, attention_mask: tf.Tensor) -> dict[str, tf.Tensor]:
        n = tf.shape(input_ids)[1]
        tf.debugging.assert_equal(tf.shape(attention_mask), tf.shape(input_ids), message=(
            "attention_mask must have the shape of input_ids"))
        tf.debugging.assert_less_equal(n, source_length, message=(
            f"input_ids is longer than this export's source length limit {source_length}"))
        # the smallest bucket that holds the source (one compiled program per bucket used)
        index = tf.reduce_sum(tf.cast(tf.constant(buckets) < n, tf.int32))
        branches = [functools.partial(run_bucket, input_ids, attention_mask, b)
                    for b in buckets]
        return {OUTPUT: tf.switch_case(index, branches)}

    return serve


def _source_buckets(limit: int) -> list[int]:
    """The padded source lengths an export serves: 16, 32, 64, ... (`gen.BUCKET` doubling),
    the last one the encoder's position limit."""
    buckets, b = [], gen.BUCKET
    while b < limit:
        buckets.append(b)
        b *= 2
    return [*buckets, limit]


def settings_of(model: Any, generation_kwargs: dict[str, Any]) -> tuple[dict[str, Any],
                                                                        gen.GenerationPlan]:
    """The model's generation config with the export-time overrides, checked by core's plan
    (a bad value fails here, at export time, naming the argument), and the plan."""
    gc = model.generation_config.merged(**generation_kwargs)
    p = gen.plan(model.config, gc)
    check_positions(model.config.decoder, p)
    if p.do_sample:
        raise ValueError("do_sample=True: a SavedModel export fixes one deterministic strategy; "
                         "export greedy search (num_beams=1) or beam search (num_beams > 1)")
    if p.return_dict_in_generate or p.output_scores:
        raise ValueError("return_dict_in_generate / output_scores: a SavedModel export returns "
                         "token ids only")
    return gc.to_dict(), p


def export(model: Any, directory: str | os.PathLike, *, example_inputs: Any = None,
           **generation_kwargs: Any) -> Path:
    """Write the SavedModel of `model` into `directory` with the generation settings
    `generation_kwargs` fixed, plus `run.py` and `export.json`. `example_inputs` is unused
    (batch and length are dynamic; the source length limit is the encoder's position limit)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings, p = settings_of(model, generation_kwargs)
    source_length = max_positions(model.config.encoder)
    module = _Exported(model, p, source_length)
    signature = module._generate.get_concrete_function()
    tf.saved_model.save(module, str(directory / "saved_model"),
                        signatures={SIGNATURE: signature})
    (directory / "run.py").write_text(RUNNER)
    files = sorted(str(f.relative_to(directory)) for f in directory.rglob("*") if f.is_file())
    dec = model.config.decoder
    write_manifest(directory, "saved_model", model.config, settings, inputs=INPUTS, files=files,
                   extra={"saved_model": {
                       "directory": "saved_model", "signature": SIGNATURE, "output": OUTPUT,
                       "max_source_length": source_length,
                       "source_buckets": _source_buckets(source_length),
                       "encoder_vocab_size": int(model.config.encoder.vocab_size),
                       "decoder_vocab_size": int(dec.vocab_size)}})
    return directory


def run_exported(directory: str | os.PathLike, input_ids: np.ndarray,
                 attention_mask: np.ndarray) -> np.ndarray:
    """Tokens of the export in `directory`, run by its `run.py` in a fresh Python process
    (which imports tensorflow and numpy, never encdec)."""
    return run_script(Path(directory), input_ids, attention_mask)


# run.py: encdec.export's common runner preamble, then this format's loading and call
RUNNER = runner_script(
    'saved_model',
    r'''"""Run an encdec TensorFlow SavedModel export (numpy + tensorflow only; never encdec):''',
    r'''def _import_tensorflow():
    """tensorflow, imported with its C++ start-up notices (written to file descriptor 2
    whatever TF_CPP_MIN_LOG_LEVEL says) kept off stderr; Python errors still propagate."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def load(directory=HERE):
    """A callable (input_ids, attention_mask) -> tokens (int64) for the export in `directory`
    (its files checked against export.json first)."""
    manifest, info = read_manifest(directory)
    tf = _import_tensorflow()
    fn = tf.saved_model.load(str(Path(directory) / info["directory"])).signatures[
        info["signature"]]

    def run(input_ids, attention_mask=None):
        ids, mask = check_inputs(info, input_ids, attention_mask)
        out = fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask))
        return out[info["output"]].numpy().astype(np.int64)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="inputs", nargs="+", required=True,
                        help="npz file(s) with input_ids and attention_mask")
    parser.add_argument("--out", dest="outputs", nargs="+", required=True,
                        help="npz file(s) to write tokens to, one per --in file")
    args = parser.parse_args(argv)
    if len(args.inputs) != len(args.outputs):
        parser.error(f"{len(args.inputs)} --in files but {len(args.outputs)} --out files")
    try:
        _, info = read_manifest(HERE)
        batches = []
        for path in args.inputs:
            with np.load(path) as data:
                if "input_ids" not in data:
                    raise ExportError(f"{path}: no input_ids array")
                batches.append(check_inputs(info, data["input_ids"], data["attention_mask"]
                                            if "attention_mask" in data else None))
        run = load(HERE)
        for (ids, mask), path in zip(batches, args.outputs):
            np.savez(path, tokens=run(ids, mask))
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    assert "encdec" not in sys.modules, "the SavedModel runner must not import encdec"
    return 0


if __name__ == "__main__":
    sys.exit(main())
''')
