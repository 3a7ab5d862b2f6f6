"""Renders docs/reliability.md by trying every bad input of tests/test_bad_inputs.py in every
backend (and every bad file of tests/core/bad_files.py); tests/docs/test_reliability_page.py
checks the committed page, so the page cannot drift from what the library does.

Write the page with: python -m tests.docs.reliability > docs/reliability.md
"""

from __future__ import annotations

import importlib.util
import re

from tests.test_bad_inputs import (
    BACKENDS,
    DEC_VOCAB,
    ENC_VOCAB,
    FORWARD_CASES,
    GENERATE_CASES,
    POSITIONS,
    Case,
    attempt,
)

HEADER = f"""\
# Reliability: bad inputs and the errors they give

encdec checks what it is given at its boundary, once, in `encdec.core.validation`, and every
backend calls those checks before anything runs on the input — before an embedding gather, and
before any compiled program (TensorFlow's XLA `generate`, Flax's `nnx.jit` loop). So a bad
input gives the same `ValueError` in PyTorch, TensorFlow and Flax, naming the argument, the
offending value or shape, and the limit. (transformers' `EncoderDecoderModel` gives a bare
`IndexError: index out of range in self` for an id outside the vocabulary, a reshape error
for an empty input, and in Flax no error at all: its gathers clamp, and the logits come out
wrong without a word.)

This page is generated: each row below was run in every backend by
`python -m tests.docs.reliability > docs/reliability.md`, and a test fails when the page no
longer matches what the library does. The model tried is a tiny bert2bert whose encoder has a
vocabulary of {ENC_VOCAB} ids and whose decoder has {DEC_VOCAB}, both with {POSITIONS}
positions, on a batch of 2 sources of 5 tokens and targets of 4.
"""

TRACE = """\
## Inside your own `tf.function` or `nnx.jit`

When you wrap the model in your own compiled function (`tf.function(model, jit_compile=True)`,
Keras' compiled `fit`, `nnx.jit(lambda m, x: m(x))`, `jax.jit`), the checks still run, once,
while the function is traced — but the values of the inputs are not known then, only their
shapes and dtypes. So inside a trace:

- **checked**: dtypes (ids must be integers), ranks, empty batches and zero-length sequences,
  every length against its position table (the cache's included), every shape that must agree
  with another (masks, labels, `encoder_outputs`, embedding widths), batch sizes — the rows
  marked "yes" in the last column above;
- **not checked**: the values of token ids and labels (an id outside the vocabulary). Check
  them before you enter the compiled function (call the model eagerly once, or run
  `encdec.core.validation.check_forward(model.config, input_ids=..., labels=...)` on your
  numpy batches), because a compiled gather does not fail on them: XLA clamps the index.

`generate` is never affected: in every backend it checks its inputs on the host before it
compiles or runs anything, so the ids' values are always checked there. Keras' `fit` with
`run_eagerly=True` checks the values of every batch; compiled `fit` checks shapes only.
The checks cost one pass over the ids per call (a min/max-like scan on the host), once per
`generate` call and never per decoding step.
"""


SAVING = """\
## Saving

`save_pretrained` writes into a hidden sibling directory (`.NAME.tmp-*`) and swaps it in with
one atomic rename (`encdec-convert` and `encdec export` also write a temporary sibling and
rename it into place only once it is complete and verified). An interrupted save — an
exception, a full disk, a killed process — leaves the previous checkpoint as it was. Two saves
to one directory never mix: the second fails at once with a `CheckpointError` saying that
another save to that directory is in progress (and which process holds it). The lock is an
operating-system lock released when its process exits, so it never goes stale. A killed save may
leave `.NAME.tmp-*`, `.NAME.swap-*` or `.NAME.lock` next to the directory; loaders never read
them and the next save to that directory deletes them. Saving over the directory a model was
loaded from is safe: readers keep their files open.
"""


def message(e: BaseException | None) -> str:
    """The library's message: Keras' wrapper ('Exception encountered when calling ...',
    its bold markup and the argument list) taken off."""
    if e is None:
        return "(no error)"
    text = str(e)
    bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    if bold:
        text = bold.group(1)
    return f"{type(e).__name__}: {text.strip()}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def case_rows(cases: list[Case], traced_column: bool) -> list[str]:
    head = "| input | error | backends |" + (" checked inside a trace |" if traced_column else "")
    rows = [head, "|---|---|---|" + ("---|" if traced_column else "")]
    for case in cases:
        by_message: dict[str, list[str]] = {}
        for backend in BACKENDS:
            by_message.setdefault(message(attempt(backend, case)), []).append(backend)
        for i, (text, backends) in enumerate(by_message.items()):
            cells = [case.description if i == 0 else "″", _cell(text), ", ".join(backends)]
            if traced_column:
                cells.append("yes" if case.traced else "no (values)")
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def file_rows() -> list[str] | None:
    """The bad checkpoint files of tests/core/bad_files.py, when that module is there."""
    if importlib.util.find_spec("tests.core.bad_files") is None:
        return None
    from tests.core.bad_files import CASES

    rows = ["| file | damage | error |", "|---|---|---|"]
    for case in CASES:
        rows.append(f"| `{case.file}` | {_cell(case.description)} | {_cell(case.error())} |")
    return rows


def render() -> str:
    """The whole page."""
    parts = [HEADER,
             "## The forward pass", "",
             "`model(input_ids=..., decoder_input_ids=..., labels=..., ...)`: the same error "
             "in every backend; the last column says whether the check also runs inside your own "
             "compiled function (see below).", "",
             *case_rows(FORWARD_CASES, traced_column=True), "",
             "## `generate`", "",
             "`model.generate(input_ids, attention_mask, **generation_kwargs)` (max_new_tokens=3 "
             "unless the row says otherwise). Generation arguments are checked once per call, in "
             "one place (`encdec.core.validation.check_generation_config`, called by "
             "`encdec.core.generation.plan`); errors that the reference gives too keep its "
             "wording.", "",
             *case_rows(GENERATE_CASES, traced_column=False), "",
             TRACE]
    files = file_rows()
    if files is not None:
        parts += ["## Checkpoint files", "",
                  "Every reader (safetensors and its index, config.json, generation_config.json, "
                  "pytorch_model.bin, and the converter's tf_model.h5 / flax_model.msgpack) "
                  "refuses a damaged file with the library's own error naming the file "
                  "(paths below are relative to the checkpoint directory):", "",
                  *files, ""]
    parts += [SAVING]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
