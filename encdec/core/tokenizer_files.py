"""A checkpoint's tokenizer files: found beside each side's weights when warm-starting, carried
by the composite, written beside its weights by `save_pretrained` and found there again by
`from_pretrained` (issue 21). The encoder's tokenizer sits in the checkpoint's directory, as
transformers' `AutoTokenizer.from_pretrained(directory)` expects; a decoder tokenizer that
differs (bert2gpt2) sits in its `decoder_tokenizer/` subdirectory.

Reading the special tokens needs no tokenizer library (the files are JSON and text); turning
text into ids and back is the `tokenizers` library's (`TokenizerFiles.load`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a tokenizer of the reference's checkpoints is made of: a fast tokenizer's one file, the
# files its slow tokenizers read (WordPiece, byte-level BPE, SentencePiece) and their settings.
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
         "sentencepiece.bpe.model", "spiece.model", "source.spm", "target.spm")
# the files that make a tokenizer (the others only configure one)
_MAKERS = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
           "spiece.model", "source.spm")
DECODER_DIR = "decoder_tokenizer"
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
            "mask_token")


class TokenizerError(ValueError):
    """A tokenizer file that cannot be read, named with the problem."""


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer files of one directory (`names`: those of `FILES` it holds)."""

    directory: str
    names: tuple[str, ...]

    @property
    def paths(self) -> dict[str, Path]:
        return {name: Path(self.directory) / name for name in self.names}

    def _json(self, name: str) -> dict[str, Any]:
        if name not in self.names:
            return {}
        path = Path(self.directory) / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
        if not isinstance(data, dict):
            raise TokenizerError(f"tokenizer file {path} holds {type(data).__name__}, "
                                 "expected a JSON object")
        return data

    def special_tokens(self) -> dict[str, str]:
        """`bos_token`, `eos_token`, … as strings: from special_tokens_map.json over
        tokenizer_config.json (as transformers reads them); WordPiece files without either
        get BERT's, byte-level BPE files GPT-2's."""
        tokens: dict[str, str] = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            for key, value in self._json(name).items():
                if key in _SPECIAL:
                    content = value.get("content") if isinstance(value, dict) else value
                    if isinstance(content, str):
                        tokens[key] = content
        if not tokens:
            vocab = self.vocab()
            if "[CLS]" in vocab and "[SEP]" in vocab:
                tokens = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                          "unk_token": "[UNK]", "mask_token": "[MASK]"}
            elif "<|endoftext|>" in vocab:
                tokens = dict.fromkeys(("bos_token", "eos_token", "unk_token"),
                                       "<|endoftext|>")
        return tokens

    def vocab(self) -> dict[str, int]:
        """Token -> id, from tokenizer.json (its model's vocabulary and added tokens),
        vocab.txt (one token per line) or vocab.json; empty for a SentencePiece model alone."""
        if "tokenizer.json" in self.names:
            data = self._json("tokenizer.json")
            model = data.get("model") or {}
            raw = model.get("vocab") or {}
            if isinstance(raw, list):  # Unigram: [[piece, score], ...]
                vocab = {entry[0]: i for i, entry in enumerate(raw)}
            else:
                vocab = dict(raw)
            for added in data.get("added_tokens") or []:
                vocab[added["content"]] = int(added["id"])
            return vocab
        if "vocab.txt" in self.names:
            path = Path(self.directory) / "vocab.txt"
            lines = path.read_text(encoding="utf-8").splitlines()
            return {token: i for i, token in enumerate(lines)}
        if "vocab.json" in self.names:
            return {k: int(v) for k, v in self._json("vocab.json").items()}
        return {}

    def special_ids(self) -> dict[str, int]:
        """`bos_token_id`, `eos_token_id`, … for the special tokens the vocabulary holds."""
        vocab = self.vocab()
        return {f"{key}_id": vocab[token] for key, token in self.special_tokens().items()
                if token in vocab}

    def same_as(self, other: TokenizerFiles | None) -> bool:
        """The same files with the same bytes."""
        if other is None or set(self.names) != set(other.names):
            return False
        mine, theirs = self.paths, other.paths
        return all(mine[n].read_bytes() == theirs[n].read_bytes() for n in self.names)

    def load(self) -> Any:
        """A `tokenizers.Tokenizer` for these files: tokenizer.json as it is, WordPiece
        vocab.txt as BERT's tokenizer (lower-cased where tokenizer_config.json says so), byte-level
        BPE vocab.json + merges.txt as GPT-2's. Needs the `tokenizers` package."""
        try:
            import tokenizers
        except ImportError as e:
            raise ImportError("turning text into ids needs the tokenizers package: "
                              "pip install tokenizers") from e
        paths = self.paths
        if "tokenizer.json" in paths:
            return tokenizers.Tokenizer.from_file(str(paths["tokenizer.json"]))
        if "vocab.txt" in paths:
            lower = self._json("tokenizer_config.json").get("do_lower_case", True)
            return tokenizers.BertWordPieceTokenizer(str(paths["vocab.txt"]),
                                                     lowercase=bool(lower))
        if "vocab.json" in paths and "merges.txt" in paths:
            return tokenizers.ByteLevelBPETokenizer(str(paths["vocab.json"]),
                                                    str(paths["merges.txt"]))
        raise TokenizerError(f"{self.directory} has no tokenizer the tokenizers package reads "
                             f"without transformers (found {', '.join(self.names)}): add its "
                             "tokenizer.json")


def find(directory: str | os.PathLike | None) -> TokenizerFiles | None:
    """The tokenizer files in `directory`, or None where it holds no tokenizer."""
    if directory is None or not Path(directory).is_dir():
        return None
    names = tuple(n for n in FILES if (Path(directory) / n).is_file())
    if not any(n in names for n in _MAKERS):
        return None
    return TokenizerFiles(str(directory), names)


@dataclass(frozen=True)
class Tokenizers:
    """A composite's two tokenizers (either may be None: a backbone given as an object, a
    checkpoint without tokenizer files)."""

    encoder: TokenizerFiles | None = None
    decoder: TokenizerFiles | None = None

    @classmethod
    def of_checkpoint(cls, directory: str | os.PathLike) -> Tokenizers:
        """What `files` wrote into a composite checkpoint's `directory`."""
        top = find(directory)
        own = find(Path(directory) / DECODER_DIR)
        return cls(top, own if own is not None else top)

    def files(self) -> dict[str, Path]:
        """Name in the checkpoint -> source file: the encoder's tokenizer at the top (the
        decoder's where the encoder has none) and the decoder's under `DECODER_DIR` when it
        differs from the encoder's."""
        top = self.encoder if self.encoder is not None else self.decoder
        out = dict(top.paths) if top is not None else {}
        if self.decoder is not None and top is not self.decoder and \
                not self.decoder.same_as(top):
            out.update({f"{DECODER_DIR}/{n}": p for n, p in self.decoder.paths.items()})
        return out

    def composite_ids(self) -> dict[str, int]:
        """The composite's `decoder_start_token_id`, `eos_token_id` and `pad_token_id` from the
        decoder's tokenizer, as the reference's examples set them: start with [CLS] (or BOS),
        end with [SEP] (or EOS), pad with [PAD] (or EOS where there is none, as for GPT-2)."""
        if self.decoder is None:
            return {}
        ids = self.decoder.special_ids()
        start = ids.get("cls_token_id", ids.get("bos_token_id"))
        eos = ids.get("sep_token_id") if "cls_token_id" in ids else ids.get("eos_token_id")
        pad = ids.get("pad_token_id", eos)
        out = {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": pad}
        return {k: v for k, v in out.items() if v is not None}
