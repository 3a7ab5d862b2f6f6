"""Tokenizers travel with checkpoints (issue 21), in every backend: a warm start finds each
side's tokenizer files, sets the composite's start, pad and end ids from the decoder's
tokenizer unless they are given, `save_pretrained` writes the files beside the weights (a
decoder tokenizer that differs in `decoder_tokenizer/`) and `from_pretrained` finds them again;
the real all-MiniLM-L6-v2 tokenizer saved that way loads in transformers. Reading the files:
tests/core/test_tokenizer_files.py."""

from __future__ import annotations

import json
import shutil

import pytest

from encdec.core.tokenizer_files import DECODER_DIR
from tests.harness.test_warm_start import Singles

# a WordPiece vocabulary (BERT's special tokens) and a byte-level BPE one (GPT-2's)
WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]
BPE = {"<|endoftext|>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "Ġ": 5, "w": 6, "r": 7, "d": 8,
       "he": 9, "ll": 10}


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """A tiny BERT with a WordPiece vocab.txt and a tiny GPT-2 with vocab.json + merges.txt."""
    root = tmp_path_factory.mktemp("tok")
    single = Singles(root / "singles")
    bert, gpt2 = root / "bert", root / "gpt2"
    shutil.copytree(single["BertModel"], bert)
    shutil.copytree(single["GPT2LMHeadModel"], gpt2)
    (bert / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (gpt2 / "vocab.json").write_text(json.dumps(BPE))
    (gpt2 / "merges.txt").write_text("#version: 0.2\nh e\nl l\n")
    return bert, gpt2


def test_tokenizers_travel_with_the_checkpoint(backend, sides, tmp_path):
    bert, gpt2 = sides
    model, _ = backend.warm_start(bert, gpt2)
    # GPT-2's tokenizer: starts, ends and pads with <|endoftext|> (no [PAD]: pad = end)
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (0, 0)
    assert model.generation_config.decoder_start_token_id == 0
    assert model.tokenizers.encoder.names == ("tokenizer_config.json", "vocab.txt")
    assert model.tokenizers.decoder.names == ("vocab.json", "merges.txt")

    backend.save(model, tmp_path / "saved")
    files = sorted(str(p.relative_to(tmp_path / "saved")) for p in (tmp_path / "saved").rglob("*")
                   if p.is_file())
    assert [f for f in files if "tok" in f or "vocab" in f or "merges" in f] == [
        f"{DECODER_DIR}/merges.txt", f"{DECODER_DIR}/vocab.json", "tokenizer_config.json",
        "vocab.txt"], files
    assert (tmp_path / "saved" / "vocab.txt").read_text() == (bert / "vocab.txt").read_text()

    loaded = backend.load(tmp_path / "saved")
    assert loaded.config.decoder_start_token_id == 0
    assert loaded.tokenizers.encoder.load().encode("Hello worlds").ids == [2, 5, 6, 7, 3]
    assert loaded.tokenizers.decoder.load().encode("hello").ids == [9, 10, 4]
    backend.save(loaded, tmp_path / "again")  # what was loaded is written again
    assert (tmp_path / "again" / DECODER_DIR / "vocab.json").is_file()

    # ids given as keywords win over the tokenizer's; the same tokenizer on both sides is
    # written once, at the top
    model, _ = backend.warm_start(bert, bert, decoder_start_token_id=3, pad_token_id=1)
    assert (model.config.decoder_start_token_id, model.config.pad_token_id) == (3, 1)
    assert model.generation_config.eos_token_id == 3  # [SEP]: BERT's config has no end id
    backend.save(model, tmp_path / "bert2bert")
    assert not (tmp_path / "bert2bert" / DECODER_DIR).exists()


def test_minilm_tokenizer_saved_with_the_model_loads_in_transformers(backend, minilm_dir,
                                                                     tmp_path):
    """The real all-MiniLM-L6-v2 (slow: `minilm_dir`): [CLS] starts, [SEP] ends, [PAD] pads;
    transformers loads the saved composite with those ids and its tokenizer from the same
    directory, which encodes as the one warm-started from."""
    import transformers as tr

    model, _ = backend.warm_start(minilm_dir, minilm_dir)
    assert (model.config.decoder_start_token_id, model.config.pad_token_id,
            model.generation_config.eos_token_id) == (101, 0, 102)
    backend.save(model, tmp_path)
    ref = tr.EncoderDecoderModel.from_pretrained(tmp_path)
    assert (ref.config.decoder_start_token_id, ref.config.pad_token_id) == (101, 0)
    text = "The quick brown fox jumps over the lazy dog."
    want = tr.AutoTokenizer.from_pretrained(minilm_dir)(text)["input_ids"]
    assert tr.AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == want
    tok = backend.load(tmp_path).tokenizers.decoder.load()
    tok.no_padding()
    assert tok.encode(text).ids == want
