"""`encdec generate DIR [TEXT ...]` (issue 21) in every backend: the text it prints for
arguments, stdin lines and a data file is the decoder tokenizer's decoding of `generate`'s
tokens for the encoder tokenizer's ids; bad data, options and checkpoints are errors naming the
file, line or argument, and leave no output file."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from encdec.cli import main
from tests.harness.test_warm_start import Singles

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]  # 99
TEXTS = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny bert2bert warm-started from a BERT with a WordPiece vocab.txt, saved with it."""
    from encdec.pt import EncoderDecoderModel

    root = tmp_path_factory.mktemp("gen")
    bert = root / "bert"
    shutil.copytree(Singles(root / "singles")["BertModel"], bert)
    (bert / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    EncoderDecoderModel.from_encoder_decoder_pretrained(bert, bert).save_pretrained(root / "b2b")
    return root / "b2b"


def expected(backend, directory, texts, **kw) -> list[str]:
    """What the command must print: generate's tokens for the tokenizer's ids, decoded."""
    model = backend.load(directory)
    assert model.generation_config.decoder_start_token_id == 2  # [CLS], from the tokenizer
    tok = model.tokenizers.encoder.load()
    ids = [e.ids for e in tok.encode_batch(texts)]
    width = max(map(len, ids))
    x = np.array([i + [0] * (width - len(i)) for i in ids])
    mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    out = backend.generate(model, x, mask, **kw)
    return model.tokenizers.decoder.load().decode_batch(out.tolist(), skip_special_tokens=True)


# tf and flax compile a beam search (the command's code is the same in every backend)
@pytest.mark.parametrize("framework", ["pt", *(pytest.param(f, marks=pytest.mark.slow)
                                               for f in ("tf", "flax"))])
def test_generate_command(adapters, framework, checkpoint, tmp_path, capsys, monkeypatch):
    backend = adapters[framework]
    want = expected(backend, checkpoint, TEXTS, max_new_tokens=5, num_beams=2)
    assert any(want)  # words, not only special tokens
    options = ["--backend", backend.name, "--max-new-tokens", "5", "--num-beams", "2"]
    assert main(["generate", str(checkpoint), *TEXTS, *options]) == 0
    assert capsys.readouterr().out.splitlines() == want
    # stdin lines, in batches of one: the same
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n\n"))
    assert main(["generate", str(checkpoint), *options, "--batch-size", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == want
    # a data file's column to a JSONL file
    data = tmp_path / "in.tsv"
    data.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out" / "gen.jsonl"
    assert main(["generate", str(checkpoint), *options, "--input", str(data),
                 "--source-column", "text", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"text": t, "generated": g} for t, g in zip(TEXTS, want, strict=True)]


@pytest.mark.parametrize("name, content, args, message", [
    ("d.jsonl", '{"source": "w1"}\n{"target": "w2"}\n', [], "d.jsonl:2: no 'source' field"),
    ("d.jsonl", '{"source": "w1"}\n\n', [], "d.jsonl:2: empty line"),
    ("d.jsonl", '{"source": "w1"}\n{"source": \n', [], "d.jsonl:2: not a JSON object"),
    ("d.jsonl", '{"source": ""}\n', [], "d.jsonl:1: 'source' is empty or not text"),
    ("d.csv", "text\nw1\n", [], "d.csv:1: no column 'source' in the header (text)"),
    ("d.txt", "w1\n", [], "unknown data format '.txt'"),
    ("d.jsonl", '{"source": "' + " ".join(["w1"] * 70) + '"}\n', ["--no-truncate"],
     "input 1 has 72 tokens, over the encoder's limit of 64"),
])
def test_bad_data_is_named(checkpoint, tmp_path, capsys, name, content, args, message):
    (tmp_path / name).write_text(content)
    out = tmp_path / "gen.jsonl"
    code = main(["generate", str(checkpoint), "--input", str(tmp_path / name), "--output",
                 str(out), *args])
    assert code == 3
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".gen.jsonl*"))


def test_long_sources_are_cut_and_counted(checkpoint, capsys):
    long = " ".join(["w1"] * 70)
    assert main(["generate", str(checkpoint), long, "w2", "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert "1 of 2 inputs were longer than the encoder's limit of 64 tokens and were cut" in err


def test_bad_options_and_checkpoints(checkpoint, tmp_path, capsys):
    assert main(["generate", str(checkpoint), "w1", "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1, got 0" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "w1", "--input", "x.jsonl"]) == 2
    assert "not both" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(checkpoint, bare)
    (bare / "vocab.txt").unlink()
    assert main(["generate", str(bare), "w1"]) == 3
    assert f"{bare} holds no tokenizer files" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing"), "w1"]) == 3
    assert "missing" in capsys.readouterr().err
    # a tokenizer with more tokens than the model's vocabulary is not the model's
    (bare / "vocab.txt").write_text("\n".join(WORDS + ["extra"]) + "\n")
    assert main(["generate", str(bare), "w1"]) == 3
    assert "the encoder's tokenizer has 100 tokens, the encoder's vocabulary 99" in \
        capsys.readouterr().err


def test_sampling_with_a_seed_repeats(checkpoint, capsys):
    args = ["generate", str(checkpoint), *TEXTS, "--do-sample", "--top-k", "20",
            "--max-new-tokens", "6"]
    outputs = []
    for seed in (3, 3, 4):
        assert main([*args, "--seed", str(seed)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]
