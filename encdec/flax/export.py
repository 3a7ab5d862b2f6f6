"""JAX export (`jax.export`, serialized StableHLO) of a Flax NNX `EncoderDecoderModel`.

The artefact is one serialized `jax.export.Exported` (`generate.jax_export`) of encdec's own
compiled greedy or beam-search program (`encdec.flax.generation._run`: the encoder once,
fixed-size caches, a `lax.while_loop` over the decoding steps) with the generation settings
fixed at export time, and the model's weights in `params.npz` (uncompressed, one array per
`nnx.Param`, named `p0000`, `p0001`, ... in the program's argument order).

The exported function is pure: `fn(params, input_ids, attention_mask) -> (tokens, used)`,
`params` a plain list of float arrays (so the serialized program stays small and deserializing
it needs no flax pytree node), `input_ids` / `attention_mask` (1, source_length) int32, `tokens`
(num_return_sequences, max_length) int32 padded, `used` the number of its columns that were
generated (start token included). The model's non-weight state (its dropout RNG keys, unused
at inference) is closed over as constants.

Static shapes: the batch is 1 and the source is padded (masked out) to the export's source
length, the encoder's position limit. `run.py` runs the examples of a batch one after another
through the batch-1 program and crops their rows together to the longest generated length, as
`generate` crops a batch. Per-example decoding gives the batch's tokens: greedy rows are
independent, and a beam-search example that stops early in a batch only freezes its finished
hypotheses while the others run on. (A symbolic batch, `jax.export.symbolic_shape("b")`, is
not used: beam search's initial state is built on the host for a concrete batch.)

The program is exported for the CPU platform (the one this jaxlib runs on when exporting);
`run.py` (numpy + jax only, never encdec or flax) checks the files' sha256 from `export.json`,
validates the inputs and calls `jax.export.deserialize(...).call`. `run_exported` runs that
script in a fresh process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from encdec.core import generation as gen
from encdec.core.registry import max_positions
from encdec.core.validation import check_positions
from encdec.export import run_script, runner_script, write_manifest

from . import generation as flax_generation

PROGRAM = "generate.jax_export"
PARAMS = "params.npz"
INPUTS = {"input_ids": "int32", "attention_mask": "int32"}


def settings_of(model: Any, generation_kwargs: dict[str, Any]) -> tuple[dict[str, Any],
                                                                        gen.GenerationPlan]:
    """The model's generation config with the export-time overrides, checked by core's plan
    (a bad value fails here, at export time, naming the argument), and the plan."""
    gc = model.generation_config.merged(**generation_kwargs)
    p = gen.plan(model.config, gc)
    check_positions(model.config.decoder, p)
    if p.do_sample:
        raise ValueError("do_sample=True: a JAX export fixes one deterministic strategy; "
                         "export greedy search (num_beams=1) or beam search (num_beams > 1)")
    if p.return_dict_in_generate or p.output_scores:
        raise ValueError("return_dict_in_generate / output_scores: a JAX export returns "
                         "token ids only")
    return gc.to_dict(), p


def _program(graphdef: Any, treedef: Any, rest: Any, p: gen.GenerationPlan) -> Any:
    """The pure function (params list, ids (1, S), mask (1, S)) -> (tokens (R, L), used)."""
    r = p.num_return_sequences
    key = gen.static_key(p)

    def fn(leaves: list[jax.Array], ids: jax.Array, mask: jax.Array):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)
        out = flax_generation._run(key, model, ids, mask, jax.random.key(0))
        if p.is_beam:  # `gen.beam_finalize` for one example
            rows = out["sequences"][0, :r]
            used = jnp.max(jnp.sum((out["beam_indices"][0, :r] != -1).astype(jnp.int32), -1))
            return rows.astype(jnp.int32), (used + gen.PROMPT_LENGTH).astype(jnp.int32)
        return out["sequences"].astype(jnp.int32), out["cur_len"].astype(jnp.int32)

    return fn


def export(model: Any, directory: str | os.PathLike, *, example_inputs: Any = None,
           **generation_kwargs: Any) -> Path:
    """Write the serialized JAX export of `model` into `directory` with the generation settings
    `generation_kwargs` fixed, plus `params.npz`, `run.py` and `export.json`. `example_inputs`
    is unused (the batch is run example by example; the source length limit is the encoder's
    position limit)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings, p = settings_of(model, generation_kwargs)
    source_length = max_positions(model.config.encoder)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    fn = _program(graphdef, treedef, rest, p)
    specs = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves]
    src = jax.ShapeDtypeStruct((1, source_length), jnp.int32)
    exported = jax.export.export(jax.jit(fn))(specs, src, src)
    (directory / PROGRAM).write_bytes(bytes(exported.serialize()))
    np.savez(directory / PARAMS, **{f"p{i:04d}": np.asarray(x) for i, x in enumerate(leaves)})
    (directory / "run.py").write_text(RUNNER)
    dec = model.config.decoder
    write_manifest(directory, "jax", model.config, settings, inputs=INPUTS,
                   files=sorted(["run.py", PROGRAM, PARAMS]),
                   extra={"jax": {
                       "program": PROGRAM, "params": PARAMS, "num_params": len(leaves),
                       "platforms": list(exported.platforms), "jax_version": jax.__version__,
                       "max_source_length": source_length,
                       "num_return_sequences": p.num_return_sequences,
                       "max_length": p.max_length, "prompt_length": gen.PROMPT_LENGTH,
                       "pad_token_id": p.pad_token_id or 0,
                       "encoder_vocab_size": int(model.config.encoder.vocab_size),
                       "decoder_vocab_size": int(dec.vocab_size)}})
    return directory


def run_exported(directory: str | os.PathLike, input_ids: np.ndarray,
                 attention_mask: np.ndarray) -> np.ndarray:
    """Tokens of the export in `directory`, run by its `run.py` in a fresh Python process
    (which imports jax and numpy, never encdec or flax)."""
    return run_script(Path(directory), input_ids, attention_mask)


# run.py: encdec.export's common runner preamble, then this format's loading and call
RUNNER = runner_script(
    'jax', r'''"""Run an encdec JAX export (numpy + jax only; never encdec or flax):''',
    r'''def _load_params(directory, info):
    path = Path(directory) / info["params"]
    try:
        with np.load(path, allow_pickle=False) as data:
            params = [data[f"p{i:04d}"] for i in range(info["num_params"])]
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{path}: cannot read the export's weights ({e})") from None
    return params


def load(directory=HERE):
    """A callable (input_ids, attention_mask) -> tokens (int64) for the export in `directory`
    (its files checked against export.json first)."""
    manifest, info = read_manifest(directory)
    path = Path(directory) / info["program"]
    params = _load_params(directory, info)
    import jax

    try:
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as e:  # a flatbuffer that is not an Exported
        raise ExportError(f"{path}: not a serialized jax.export program ({e})") from None
    want = [(tuple(p.shape), str(p.dtype)) for p in params]
    have = [(tuple(a.shape), str(a.dtype)) for a in exported.in_avals[:len(params)]]
    if len(exported.in_avals) != len(params) + 2 or want != have:
        raise ExportError(f"{path}: its arguments do not match the weights in "
                          f"{Path(directory) / info['params']} (files from different exports)")
    params = [jax.device_put(p) for p in params]
    source_length, pad = info["max_source_length"], info["pad_token_id"]

    def run(input_ids, attention_mask=None):
        ids, mask = check_inputs(info, input_ids, attention_mask)
        extra = ((0, 0), (0, source_length - ids.shape[1]))
        ids = np.pad(ids, extra, constant_values=pad)
        mask = np.pad(mask, extra, constant_values=0)
        rows, used = [], []
        for i in range(ids.shape[0]):
            tokens, n = exported.call(params, ids[i:i + 1], mask[i:i + 1])
            rows.append(np.asarray(tokens))
            used.append(int(n))
        crop = max([info["prompt_length"], *used])
        length = info["max_length"]
        out = np.concatenate(rows, 0) if rows else np.zeros((0, length), np.int32)
        return out[:, :crop].astype(np.int64)

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
    for name in ("encdec", "flax"):
        assert name not in sys.modules, f"the JAX runner must not import {name}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
''')
