"""`encdec-convert`: convert composite encoder-decoder checkpoints between the reference's
PyTorch, TF and Flax layouts, verifying the result numerically before it is put in place."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from encdec.core.checkpoint import parse_size

from .converter import DTYPES, FORMATS, ConvertError, convert

EXIT_CODES = """\
exit codes:
  0  converted (and verified, unless --no-verify)
  1  verification failed: max |Δlogits| above the bound for the dtype; nothing written
  2  usage error (bad option or value)
  3  bad input: missing config.json, unknown architecture, unreadable, truncated or
     inconsistent weights (the message names the file and key)
  4  output refused or failed: DST exists without --force, DST inside SRC, write error
  5  a framework needed for --verify is not installed (install it or pass --no-verify)
"""

EXAMPLES = """\
examples:
  encdec-convert ckpt/ ckpt-tf/ --to tf                 # model.safetensors -> tf_model.h5
  encdec-convert ref-flax/ ckpt/ --to pt                # flax_model.msgpack -> model.safetensors
  encdec-convert ckpt/ ckpt-flax/ --to flax --dtype bfloat16
  encdec-convert ckpt/ ckpt-pt/ --to pt --shard-size 500MB
  encdec-convert ckpt/ split/ --to tf --split           # encoder/ + decoder/ for *_from_pt=True
  encdec-convert both/ out/ --to pt --from tf           # read tf_model.h5 though SRC has several
  encdec-convert ckpt/ out/ --to tf --force             # replace an existing out/
  encdec-convert ckpt/ out/ --to tf --no-verify         # skip the numerical check
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encdec-convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__, epilog=EXAMPLES + "\n" + EXIT_CODES)
    p.add_argument("src", metavar="SRC", help="checkpoint directory: model.safetensors (or "
                   "pytorch_model.bin), tf_model.h5 or flax_model.msgpack, with config.json")
    p.add_argument("dst", metavar="DST", help="directory to create (refused if it exists, "
                   "unless --force)")
    p.add_argument("--to", required=True, choices=FORMATS,
                   help="target layout: pt = model.safetensors, tf = tf_model.h5, "
                   "flax = flax_model.msgpack (e.g. --to tf)")
    p.add_argument("--from", dest="source_format", choices=FORMATS, default=None,
                   help="which weights of SRC to read when it holds several "
                   "(default: pt, then tf, then flax; e.g. --from flax)")
    p.add_argument("--split", action="store_true",
                   help="write encoder/ and decoder/ PyTorch single-model checkpoints for the "
                   "reference's from_encoder_decoder_pretrained(enc, dec, encoder_from_pt=True, "
                   "decoder_from_pt=True), with the composite config beside them "
                   "(e.g. --to tf --split)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="run source and result on random inputs in their frameworks and fail "
                   "above the bound (default: on; e.g. --no-verify)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the written weights (default float32; e.g. --dtype bfloat16; "
                   "tf_model.h5 cannot hold bfloat16)")
    p.add_argument("--shard-size", default="5GB",
                   help="largest safetensors shard for --to pt and --split (default 5GB; "
                   "e.g. --shard-size 500MB)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing DST, after the new one is written and verified "
                   "(e.g. --force)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars or summary, errors only (e.g. -q)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `encdec-convert`; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    try:
        parse_size(args.shard_size)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"encdec-convert: error: --shard-size: {e}", file=sys.stderr)
        return 2
    if args.shard_size != "5GB" and args.to != "pt" and not args.split:
        print("encdec-convert: error: --shard-size applies to --to pt and --split only "
              "(tf_model.h5 and flax_model.msgpack are written as one file)", file=sys.stderr)
        return 2
    log = (lambda _msg: None) if args.quiet else print
    try:
        result = convert(args.src, args.dst, args.to, source_format=args.source_format,
                         split=args.split, verify_result=args.verify, dtype=args.dtype,
                         shard_size=args.shard_size, force=args.force, quiet=args.quiet, log=log)
    except ConvertError as e:
        print(f"encdec-convert: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("encdec-convert: interrupted; nothing written", file=sys.stderr)
        return 130
    what = "split checkpoints" if args.split else f"{args.to} checkpoint"
    log(f"wrote {what} to {result.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
