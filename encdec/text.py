"""Text in, text out (issue 21): `encdec generate DIR [TEXT ...]` loads a composite checkpoint
in any backend with the tokenizer saved beside it (`encdec.core.tokenizer_files`), and writes
what it generates for texts given as arguments, stdin lines, or a JSONL / CSV / TSV file's
source column (to a JSONL file)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encdec.convert import backends
from encdec.core.registry import max_positions


class DataError(ValueError):
    """A data file that cannot be read as asked, named with its line."""


def read_column(path: Path, column: str) -> list[str]:
    """The `column` of every record of a JSONL, CSV or TSV file (by its suffix); a missing
    column, an empty or malformed line is a DataError naming the file and line."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    rows: Iterator[tuple[int, Any]]
    if suffix in (".jsonl", ".json"):
        def parsed() -> Iterator[tuple[int, Any]]:
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    raise DataError(f"{path}:{n}: empty line")
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
        rows = parsed()
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise DataError(f"{path}:1: no column {column!r} in the header "
                            f"({', '.join(reader.fieldnames or [])})")
        rows = ((n + 2, row) for n, row in enumerate(reader))
    else:
        raise DataError(f"{path}: unknown data format {suffix!r}: use .jsonl, .csv or .tsv")
    out = []
    for n, row in rows:
        if not isinstance(row, dict) or column not in row:
            raise DataError(f"{path}:{n}: no {column!r} field")
        value = row[column]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}:{n}: {column!r} is empty or not text")
        out.append(value)
    if not out:
        raise DataError(f"{path}: no records")
    return out


def _write_jsonl_atomically(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Generator:
    """A checkpoint in one backend with its tokenizers: texts -> generated texts."""

    def __init__(self, directory: str | os.PathLike, framework: str = "pt"):
        self.framework = framework
        self.model = backends.load(framework, directory)
        files = self.model.tokenizers
        if files.encoder is None or files.decoder is None:
            raise DataError(f"{directory} holds no tokenizer files (tokenizer.json, vocab.txt, "
                            "or vocab.json + merges.txt): save the model after a warm start "
                            "from checkpoints that have them, or copy them there")
        self.source, self.target = files.encoder.load(), files.decoder.load()
        self.source.no_padding()
        self.source.no_truncation()
        self.limit = max_positions(self.model.config.encoder)
        for side, tok in (("encoder", self.source), ("decoder", self.target)):
            vocab = getattr(self.model.config, side).vocab_size
            if tok.get_vocab_size() > vocab:
                raise DataError(f"{directory}: the {side}'s tokenizer has "
                                f"{tok.get_vocab_size()} tokens, the {side}'s vocabulary "
                                f"{vocab}: not this model's tokenizer")
        self.pad = self.model.generation_config.pad_token_id or 0

    def encode(self, texts: Sequence[str], truncate: bool) -> tuple[dict[str, np.ndarray], int]:
        """Padded ids and mask; sources over the encoder's limit are cut (their count is
        returned) or, with `truncate=False`, a DataError naming the first one."""
        encoded = [e.ids for e in self.source.encode_batch(list(texts))]
        cut = 0
        for i, ids in enumerate(encoded):
            if len(ids) > self.limit:
                if not truncate:
                    raise DataError(f"input {i + 1} has {len(ids)} tokens, over the encoder's "
                                    f"limit of {self.limit} (drop --no-truncate to cut it)")
                encoded[i], cut = ids[:self.limit], cut + 1
        width = max(len(ids) for ids in encoded)
        input_ids = np.full((len(encoded), width), self.pad, np.int64)
        mask = np.zeros((len(encoded), width), np.int64)
        for i, ids in enumerate(encoded):
            input_ids[i, :len(ids)], mask[i, :len(ids)] = ids, 1
        return {"input_ids": input_ids, "attention_mask": mask}, cut

    def __call__(self, texts: Sequence[str], *, truncate: bool = True,
                 **settings: Any) -> tuple[list[str], int]:
        batch, cut = self.encode(texts, truncate)
        ids = backends.generate(self.framework, self.model, batch, **settings)
        return self.target.decode_batch(ids.tolist(), skip_special_tokens=True), cut


SETTINGS = ("num_beams", "max_new_tokens", "do_sample", "top_k", "top_p", "temperature",
            "no_repeat_ngram_size", "repetition_penalty", "length_penalty")


def cmd_generate(args: argparse.Namespace) -> int:
    """`encdec generate`: exit 0, 2 for a bad option, 3 for unreadable data or checkpoint."""
    backends.quiet()
    if args.batch_size < 1:
        print(f"encdec generate: --batch-size must be at least 1, got {args.batch_size}",
              file=sys.stderr)
        return 2
    if args.texts and args.input:
        print("encdec generate: give texts or --input FILE, not both", file=sys.stderr)
        return 2
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    try:
        if args.input:
            texts = read_column(Path(args.input), args.source_column)
        elif args.texts:
            texts = list(args.texts)
        else:
            texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if args.seed is not None:
            settings["seed"] = args.seed
        generator = Generator(args.checkpoint, args.framework)
        outputs: list[str] = []
        cut = 0
        for start in range(0, len(texts), args.batch_size):
            chunk = texts[start:start + args.batch_size]
            got, n = generator(chunk, truncate=not args.no_truncate, **settings)
            outputs += got
            cut += n
            if args.input and args.output:
                print(f"\r{len(outputs)}/{len(texts)} inputs", end="", file=sys.stderr)
        if args.input and args.output:
            print(file=sys.stderr)
    except (DataError, OSError, ValueError, TypeError) as e:
        print(f"encdec generate: error: {e}", file=sys.stderr)
        return 3
    if cut:
        print(f"encdec generate: {cut} of {len(texts)} inputs were longer than the encoder's "
              f"limit of {generator.limit} tokens and were cut", file=sys.stderr)
    if args.output:
        _write_jsonl_atomically(Path(args.output), [
            {args.source_column: t, "generated": o} for t, o in zip(texts, outputs, strict=True)])
    else:
        for o in outputs:
            print(o)
    return 0


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="DIR",
                        help="a composite checkpoint with its tokenizer files (save_pretrained)")
    parser.add_argument("texts", metavar="TEXT", nargs="*",
                        help="texts to generate from (default: --input, else stdin lines)")
    parser.add_argument("--backend", dest="framework", choices=backends.FRAMEWORKS, default="pt")
    parser.add_argument("--input", metavar="FILE", help="a .jsonl, .csv or .tsv data file")
    parser.add_argument("--source-column", default="source",
                        help="the column of --input to generate from (default 'source')")
    parser.add_argument("--output", metavar="FILE.jsonl",
                        help="write {source, generated} records here (atomically)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-truncate", action="store_true",
                        help="refuse a source over the encoder's limit instead of cutting it")
    parser.add_argument("--seed", type=int, help="seed of sampling (--do-sample)")
    parser.add_argument("--num-beams", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--do-sample", action="store_true", default=None)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--no-repeat-ngram-size", type=int)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--length-penalty", type=float)
