"""Input validation at the API boundary, once for every backend (numpy on the host).

Each backend's `forward` / `__call__` / `call` and `generate` hand their arguments here before
any gather or compiled code runs, so that a bad input gives the same clear `ValueError` in
PyTorch, TensorFlow and Flax, eager or compiled, where the reference gives a
bare `IndexError`, a reshape error deep in attention, or (Flax, TF under XLA) no error at all
and logits computed on clamped gathers. Every message names the argument, the offending value
or shape (the first bad id and where it is), and the limit.

What is checked where the values are concrete (eager calls, and `generate` in every backend,
which converts its inputs on the host before compiling): token ids inside the vocabulary of
their side (`labels` may also be -100), integer dtypes, lengths within each side's position
table (the architecture's offset and the cache's past length included), shapes that agree
(masks, labels, `encoder_outputs`, embeddings' width), no empty batch or zero-length sequence.
Inside a caller's own trace (`tf.function`, Keras' compiled `fit`, `nnx.jit`, `jax.jit`) the
values are not concrete: shapes, dtypes and lengths are still checked (at trace time), the ids'
values are not. Each backend passes a `host` function that returns the numpy values of one of
its tensors, or None when they are not concrete.

Generation arguments are checked once per `generate` call by `check_generation_config` (from
`encdec.core.generation.plan`) and `check_generate`, never per decoding step.

The errors are plain `ValueError`s, not a subclass: TensorFlow's autograph re-raises only the
builtin exception types from inside a `tf.function` (a subclass would reach the caller as an
`autograph.StagingError`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .config import EncoderDecoderConfig, GenerationConfig, ModelConfig
from .registry import check_length, embedding_width, max_positions, position_offset

IGNORE_INDEX = -100  # the label the loss ignores (seq2seq.IGNORE_INDEX)

Host = Callable[[Any], "np.ndarray | None"]


def _numpy_host(x: Any) -> np.ndarray | None:
    return np.asarray(x)


# --- single arguments ----------------------------------------------------------------------

def _shape(x: Any) -> tuple[int | None, ...] | None:
    """The static shape of a tensor of any backend (None for an unknown dimension; None for an
    unknown rank, e.g. a `tf.data` element without a static shape: nothing to check then)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        return np.shape(x)
    if getattr(shape, "rank", 0) is None:  # tf.TensorShape(None)
        return None
    return tuple(None if d is None else int(d) for d in shape)


def _dtype_name(x: Any, values: np.ndarray | None) -> str:
    if values is not None:
        return values.dtype.name
    dtype = getattr(x, "dtype", None)
    name = getattr(dtype, "name", None) or str(dtype)  # numpy/jax/tf: .name; torch: "torch.x"
    return name.rsplit(".", 1)[-1]


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + \
        ("," if len(shape) == 1 else "") + ")"


def _check_2d(name: str, shape: tuple[int | None, ...] | None,
              what: str = "(batch, length)") -> tuple[int | None, ...]:
    """`shape` (None: unknown rank, taken as all unknown) of rank len(what), no empty axis."""
    want = len(what.split(","))
    if shape is None:
        return (None,) * want
    if len(shape) != want:
        raise ValueError(f"{name}: expected shape {what}, got {_fmt(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{name}: empty batch (shape {_fmt(shape)}); at least one sequence is "
                         "needed")
    if shape[1] == 0:
        raise ValueError(f"{name}: zero-length sequences (shape {_fmt(shape)}); at least one "
                         "token is needed")
    return shape


def check_ids(name: str, x: Any, vocab_size: int, *, side: str, host: Host = _numpy_host,
              ignore_index: int | None = None) -> tuple[int | None, ...]:
    """Token ids (batch, length): integers in [0, vocab_size) (or `ignore_index`). Returns the
    static shape. Values are checked only when `host` gives them (not inside a trace)."""
    shape = _check_2d(name, _shape(x))
    values = host(x)
    dtype = _dtype_name(x, values)
    if not dtype.startswith(("int", "uint")):
        raise ValueError(f"{name}: expected integer token ids, got dtype {dtype}")
    if values is not None and values.size:
        bad = (values < 0) | (values >= vocab_size)
        if ignore_index is not None:
            bad &= values != ignore_index
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            allowed = f"[0, {vocab_size})" + (f" or {ignore_index} (ignored)"
                                               if ignore_index is not None else "")
            raise ValueError(f"{name}: id {int(values[at])} at position {at} is outside the "
                             f"{side}'s vocabulary: allowed {allowed}, vocab_size={vocab_size}")
    return shape


def _check_mask(name: str, mask: Any, want: tuple[int | None, ...], of: str) -> None:
    shape = _shape(mask)
    if shape is None:
        return
    if len(shape) != len(want) or any(a is not None and b is not None and a != b
                                      for a, b in zip(shape, want, strict=False)):
        raise ValueError(f"{name}: shape {_fmt(shape)} does not match {of} {_fmt(want)}")


def _check_embeds(name: str, x: Any, width: int, side: str) -> tuple[int | None, ...]:
    shape = _check_2d(name, _shape(x), "(batch, length, hidden)")
    if shape[2] is not None and shape[2] != width:
        raise ValueError(f"{name}: last dimension is {shape[2]}, the {side}'s embeddings are "
                         f"{width} wide (shape {_fmt(shape)})")
    return shape


def _same_batch(a: tuple[str, int | None], b: tuple[str, int | None]) -> None:
    if a[1] is not None and b[1] is not None and a[1] != b[1]:
        raise ValueError(f"{b[0]}: batch size {b[1]} does not match {a[0]}'s {a[1]}")


def _past_length(past_key_values: Any) -> int | None:
    """The cached length of legacy per-layer `(self_k, self_v, ...)` tuples (k: (B, h, P, d))."""
    if past_key_values is None:
        return 0
    try:
        shape = _shape(past_key_values[0][0])
        return None if shape is None else shape[2]
    except (TypeError, IndexError, KeyError) as e:
        raise ValueError("past_key_values: expected the legacy per-layer tuples "
                         "((self_k, self_v, cross_k, cross_v), ...) with keys (batch, heads, "
                         f"length, head_dim); got {type(past_key_values).__name__}") from e


def _encoder_states(encoder_outputs: Any) -> Any:
    if isinstance(encoder_outputs, (tuple, list)):
        return encoder_outputs[0] if encoder_outputs else None
    try:
        return encoder_outputs["last_hidden_state"]
    except (KeyError, TypeError) as e:
        raise ValueError("encoder_outputs: expected a BaseModelOutput, a dict with "
                         "'last_hidden_state' or a tuple whose first entry is it; got "
                         f"{type(encoder_outputs).__name__}") from e


# --- the forward pass ----------------------------------------------------------------------

def check_forward(config: EncoderDecoderConfig, *, input_ids: Any = None,
                  attention_mask: Any = None, decoder_input_ids: Any = None,
                  decoder_attention_mask: Any = None, encoder_outputs: Any = None,
                  past_key_values: Any = None, inputs_embeds: Any = None,
                  decoder_inputs_embeds: Any = None, labels: Any = None,
                  host: Host = _numpy_host) -> None:
    """Refuse the arguments of an `EncoderDecoderModel` forward that the model cannot run on
    (see the module docstring for what is checked, and what only outside a trace)."""
    enc, dec = config.encoder, config.decoder
    # encoder side: (name, batch) of whatever defines it
    enc_batch: tuple[str, int | None] | None = None
    if encoder_outputs is not None:
        states = _encoder_states(encoder_outputs)
        shape = _check_2d("encoder_outputs", _shape(states), "(batch, length, hidden)")
        if shape[2] is not None and shape[2] != enc.hidden_size:
            raise ValueError(f"encoder_outputs: last_hidden_state is {shape[2]} wide, the "
                             f"encoder's hidden_size is {enc.hidden_size} (shape {_fmt(shape)})")
        enc_batch = ("encoder_outputs", shape[0])
        enc_shape = shape[:2]
        if input_ids is not None:
            ids = check_ids("input_ids", input_ids, enc.vocab_size, side="encoder", host=host)
            _same_batch(enc_batch, ("input_ids", ids[0]))
        if attention_mask is not None:
            _check_mask("attention_mask", attention_mask, enc_shape,
                        "encoder_outputs.last_hidden_state's (batch, length)")
    elif input_ids is not None or inputs_embeds is not None:
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("input_ids and inputs_embeds: pass one of them, not both")
        if input_ids is not None:
            shape = check_ids("input_ids", input_ids, enc.vocab_size, side="encoder", host=host)
            name = "input_ids"
        else:
            shape = _check_embeds("inputs_embeds", inputs_embeds, embedding_width(enc),
                                  "encoder")[:2]
            name = "inputs_embeds"
        if shape[1] is not None:
            check_length(enc, name, shape[1])
        if attention_mask is not None:
            _check_mask("attention_mask", attention_mask, shape, name)
        enc_batch = (name, shape[0])
    # decoder side
    past = _past_length(past_key_values)
    if decoder_input_ids is not None or decoder_inputs_embeds is not None or labels is not None:
        lab = None
        if labels is not None:
            lab = check_ids("labels", labels, dec.lm_vocab_size, side="decoder", host=host,
                            ignore_index=IGNORE_INDEX)
        if decoder_input_ids is not None and decoder_inputs_embeds is not None:
            raise ValueError("decoder_input_ids and decoder_inputs_embeds: pass one of them, "
                             "not both")
        if decoder_input_ids is not None:
            name = "decoder_input_ids"
            shape = check_ids(name, decoder_input_ids, dec.lm_vocab_size, side="decoder",
                              host=host)
        elif decoder_inputs_embeds is not None:
            name = "decoder_inputs_embeds"
            shape = _check_embeds(name, decoder_inputs_embeds, embedding_width(dec),
                                  "decoder")[:2]
        else:  # decoder_input_ids made from labels
            assert lab is not None  # neither ids nor embeds: labels were given
            name, shape = "labels", lab
        if lab is not None and name != "labels":
            _check_mask("labels", labels, shape, name)
        if shape[1] is not None and past is not None:
            check_length(dec, name, shape[1], past)
        if decoder_attention_mask is not None:
            want = (shape[0], None if shape[1] is None or past is None else past + shape[1])
            _check_mask("decoder_attention_mask", decoder_attention_mask, want,
                        f"{name}" + (f" plus the {past} cached positions" if past else ""))
        if enc_batch is not None:
            _same_batch(enc_batch, (name, shape[0]))


# --- generate ------------------------------------------------------------------------------

def _in_vocab(name: str, value: Any, vocab: int, shown: Any = None) -> None:
    ids = value if isinstance(value, (list, tuple)) else [value]
    for i in ids:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < vocab:
            raise ValueError(f"{name}={value if shown is None else shown!r}: id {i!r} is outside "
                             f"the decoder's vocabulary [0, {vocab}) (vocab_size={vocab})")


def check_generation_config(config: EncoderDecoderConfig, gc: GenerationConfig) -> None:
    """Refuse generation arguments that cannot work (the merged config of one `generate`
    call): the reference's own errors (same wording where it has one) and the ones it lacks."""
    vocab = config.decoder.lm_vocab_size

    def positive_int(name: str, minimum: int) -> None:
        v = getattr(gc, name)
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                              or v < minimum):
            raise ValueError(f"{name}={v!r}: expected an int >= {minimum}")

    positive_int("num_beams", 1)
    positive_int("num_return_sequences", 1)
    positive_int("max_length", 1)
    positive_int("min_length", 0)
    positive_int("min_new_tokens", 0)
    positive_int("no_repeat_ngram_size", 0)
    if gc.max_new_tokens is not None and (not isinstance(gc.max_new_tokens, (int, np.integer))
                                          or gc.max_new_tokens <= 0):
        raise ValueError(f"`max_new_tokens` must be greater than 0, but is {gc.max_new_tokens}.")
    if not gc.do_sample:
        if gc.num_beams == 1 and gc.num_return_sequences > 1:
            raise ValueError("Greedy methods (do_sample != True) without beam search "
                             "(num_beams=1) do not support `num_return_sequences` different "
                             f"than 1 (got {gc.num_return_sequences}).")
    if gc.num_beams > 1 and gc.num_return_sequences > gc.num_beams:
        raise ValueError(f"`num_return_sequences` ({gc.num_return_sequences}) has to be "
                         f"smaller or equal to `num_beams` ({gc.num_beams}).")
    for name, ok, want in (
            ("temperature", lambda v: v > 0, "a float > 0"),
            ("top_p", lambda v: 0 < v <= 1, "a float in (0, 1]"),
            ("repetition_penalty", lambda v: v > 0, "a float > 0"),
            ("length_penalty", lambda v: True, "a float")):
        v = getattr(gc, name)
        if v is None:
            continue
        if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not ok(v):
            raise ValueError(f"{name}={v!r}: expected {want}")
    if gc.top_k is not None and (not isinstance(gc.top_k, (int, np.integer))
                                 or isinstance(gc.top_k, bool) or gc.top_k < 0):
        raise ValueError(f"top_k={gc.top_k!r}: expected an int >= 0 (0: no top-k filtering)")
    if gc.bad_words_ids is not None:
        bad = gc.bad_words_ids
        if not isinstance(bad, (list, tuple)) or len(bad) == 0 or any(
                not isinstance(w, (list, tuple)) or len(w) == 0 for w in bad):
            raise ValueError(f"bad_words_ids={bad!r}: expected a non-empty list of non-empty "
                             "lists of token ids")
        for w in bad:
            _in_vocab("bad_words_ids", list(w), vocab, shown=bad)
    for name in ("forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id",
                 "pad_token_id", "eos_token_id"):
        v = getattr(gc, name)
        if v is not None:
            _in_vocab(name, v, vocab)


def check_positions(decoder_config: ModelConfig, p: Any) -> None:
    """Refuse a generation plan `p` (a `GenerationPlan`) whose max_length is beyond the decoder's
    position table: under XLA an out-of-range position would be clamped silently instead of
    failing as in the reference."""
    positions, offset = max_positions(decoder_config), position_offset(decoder_config)
    if p.max_length > positions:
        raise ValueError(f"max_length={p.max_length} (start token included) exceeds the decoder's "
                         f"position table: the {decoder_config.model_type} position table serves "
                         f"{positions} (max_position_embeddings="
                         f"{decoder_config.max_position_embeddings}"
                         + (f" minus the offset {offset}" if offset else "")
                         + "); lower max_new_tokens")


def check_generate(config: EncoderDecoderConfig, plan: Any, input_ids: Any,
                   attention_mask: Any = None, *, host: Host = _numpy_host) -> None:
    """Refuse a `generate` call's inputs (once per call, before any compiled code): `input_ids`
    as in `check_forward`, the resolved start id and the length against the decoder's position
    table (`plan`: the call's `GenerationPlan`)."""
    shape = check_ids("input_ids", input_ids, config.encoder.vocab_size, side="encoder",
                      host=host)
    if shape[1] is not None:
        check_length(config.encoder, "input_ids", shape[1])
    if attention_mask is not None:
        _check_mask("attention_mask", attention_mask, shape, "input_ids")
    _in_vocab("decoder_start_token_id", plan.decoder_start_token_id,
              config.decoder.lm_vocab_size)
    check_positions(config.decoder, plan)


__all__ = ["check_forward", "check_generate", "check_generation_config",
           "check_ids", "check_positions"]
