"""Reading a checkpoint's tokenizer files without a tokenizer library (`encdec.core.
tokenizer_files`): which files make a tokenizer, the special tokens (special_tokens_map.json
over tokenizer_config.json, defaults by vocabulary), their ids from each vocabulary format, the
composite's ids from the decoder's tokenizer, and files that cannot be read named."""

from __future__ import annotations

import json

import pytest

from encdec.core.tokenizer_files import TokenizerError, Tokenizers, find


def write(directory, files: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (directory / name).write_text(text)


@pytest.mark.parametrize("files, ids, composite", [
    # WordPiece without settings: BERT's tokens
    ({"vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\nx\n"},
     {"pad_token_id": 0, "unk_token_id": 1, "cls_token_id": 2, "sep_token_id": 3},
     {"decoder_start_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}),
    # byte-level BPE without settings: GPT-2's one token; no pad, so pad = end
    ({"vocab.json": {"a": 0, "<|endoftext|>": 1}, "merges.txt": "#version: 0.2\n"},
     {"bos_token_id": 1, "eos_token_id": 1, "unk_token_id": 1},
     {"decoder_start_token_id": 1, "eos_token_id": 1, "pad_token_id": 1}),
    # tokenizer.json with added tokens; the map's entry (a dict) over the config's string
    ({"tokenizer.json": {"model": {"vocab": {"a": 0}},
                         "added_tokens": [{"id": 5, "content": "<s>"}, {"id": 6, "content": "</s>"},
                                          {"id": 7, "content": "<pad>"}]},
      "tokenizer_config.json": {"bos_token": "a", "pad_token": "<pad>"},
      "special_tokens_map.json": {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}},
     {"bos_token_id": 5, "eos_token_id": 6, "pad_token_id": 7},
     {"decoder_start_token_id": 5, "eos_token_id": 6, "pad_token_id": 7}),
    # a Unigram tokenizer.json: [piece, score] entries, ids by position
    ({"tokenizer.json": {"model": {"vocab": [["<pad>", 0.0], ["</s>", 0.0], ["x", -1.0]]}},
      "special_tokens_map.json": {"eos_token": "</s>", "pad_token": "<pad>"}},
     {"eos_token_id": 1, "pad_token_id": 0},
     {"eos_token_id": 1, "pad_token_id": 0}),
])
def test_special_ids(tmp_path, files, ids, composite):
    write(tmp_path, files)
    found = find(tmp_path)
    assert found is not None and set(found.names) == set(files)
    assert found.special_ids() == ids
    assert Tokenizers(None, found).composite_ids() == composite


def test_a_directory_without_a_tokenizer(tmp_path):
    assert find(tmp_path) is None and find(tmp_path / "missing") is None and find(None) is None
    write(tmp_path, {"tokenizer_config.json": {"cls_token": "[CLS]"}, "config.json": {}})
    assert find(tmp_path) is None  # settings alone make no tokenizer
    assert Tokenizers().composite_ids() == {} and Tokenizers().files() == {}


@pytest.mark.parametrize("name, text, message", [
    ("tokenizer.json", "{not json", "cannot read tokenizer file"),
    ("tokenizer.json", "[1, 2]", "holds list, expected a JSON object"),
])
def test_unreadable_files_are_named(tmp_path, name, text, message):
    write(tmp_path, {name: text})
    with pytest.raises(TokenizerError, match=message) as e:
        find(tmp_path).special_ids()
    assert str(tmp_path / name) in str(e.value)


def test_files_of_two_tokenizers(tmp_path):
    write(tmp_path / "a", {"vocab.txt": "[CLS]\n[SEP]\n"})
    write(tmp_path / "b", {"vocab.txt": "[CLS]\n[SEP]\n"})
    write(tmp_path / "c", {"vocab.json": {"<|endoftext|>": 0}, "merges.txt": ""})
    a, b, c = find(tmp_path / "a"), find(tmp_path / "b"), find(tmp_path / "c")
    assert Tokenizers(a, b).files() == {"vocab.txt": tmp_path / "a" / "vocab.txt"}  # same bytes
    assert Tokenizers(a, c).files() == {
        "vocab.txt": tmp_path / "a" / "vocab.txt",
        "decoder_tokenizer/vocab.json": tmp_path / "c" / "vocab.json",
        "decoder_tokenizer/merges.txt": tmp_path / "c" / "merges.txt"}
    assert Tokenizers(None, c).files() == {"vocab.json": tmp_path / "c" / "vocab.json",
                                           "merges.txt": tmp_path / "c" / "merges.txt"}
