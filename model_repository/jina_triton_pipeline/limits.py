"""Every limit the Triton models enforce and every check of what they receive, in one place.

A model loads its limits once (`ModelLimits.load`): its config parameters, which `jina-triton
serve` may lower, never raise, through the environment (JINA_TRITON_MAX_LENGTH, ...). A request
over a limit is INVALID_ARGUMENT naming the field and the rule; a request refused for now is
`Unavailable` (UNAVAILABLE, retryable). Each internal model answers a direct call as strictly as
one from its own ensemble: never a crash or a silent zero. The checks take numpy arrays or torch
tensors alike. The gateway's own limits (body, concurrency, inputs per call) are the gateway's
(serving/jina_triton_serving/gateway); the client's view of these is `jina_triton_client.Limits`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np

from jina_triton_client.contract import TEXT
from jina_triton_client.validation import InvalidArgument

from .internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE, limit_env


class Unavailable(RuntimeError):
    """Refused for now (overloaded, cancelled, past its deadline): UNAVAILABLE, retryable."""


def lowered(parameters: dict[str, str], name: str) -> int:
    """A limit from the model config, lowered (never raised) by `serve` through the environment."""
    value = int(parameters[name])
    override = os.environ.get(limit_env(name))
    return min(value, int(override)) if override else value


@dataclass(frozen=True)
class ModelLimits:
    """The limits one model enforces (None: not this model's)."""
    max_length: int | None = None          # tokens per text, prefix and EOS included
    max_text_bytes: int | None = None      # UTF-8 bytes per text
    max_request_bytes: int | None = None   # UTF-8 text bytes per request
    max_request_tokens: int | None = None  # tokens per request after truncation

    @classmethod
    def load(cls, parameters: dict[str, str]) -> "ModelLimits":
        return cls(**{spec.name: lowered(parameters, spec.name) for spec in fields(cls) if spec.name in parameters})


# -- texts and tokens (preprocess) ----------------------------------------------------------
def decode_texts(values: np.ndarray | None, field: str, max_text_bytes: int,
                 max_request_bytes: int) -> list[str]:
    """Triton BYTES [n, 1] -> str per text; the field is named in every error.

    Empty texts are refused; whitespace-only texts are embedded (the prefix
    gives them content, as in the official code).
    """
    if values is None:
        raise InvalidArgument(field, "is required")
    if values.ndim != 2 or values.shape[1] != 1:
        raise InvalidArgument(field, f"must have shape [n, 1], got {list(values.shape)}")
    if not all(isinstance(value, (bytes, np.bytes_)) for value in values[:, 0]):
        raise InvalidArgument(field, "must hold UTF-8 strings (BYTES)")
    total = sum(len(value) for value in values[:, 0])
    if total > max_request_bytes:
        raise InvalidArgument(field, f"the request holds {total} bytes of text, more than the "
                              f"limit of {max_request_bytes}; send fewer or shorter texts per request")
    texts = []
    for index, value in enumerate(values[:, 0]):
        if len(value) > max_text_bytes:
            raise InvalidArgument(f"{field}[{index}]", f"has {len(value)} bytes, more than the limit "
                                  f"of {max_text_bytes}")
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{field}[{index}]", "is not valid UTF-8") from None
        if not text:
            raise InvalidArgument(f"{field}[{index}]", "is empty")
        texts.append(text)
    return texts


def check_request_tokens(total: int, limit: int | None) -> None:
    """Tokens after truncation of one request: a static cap, so retrying cannot help."""
    if limit is not None and total > limit:
        raise InvalidArgument(TEXT, f"the request holds more than {limit} tokens after truncation, the limit per "
                              f"request; send fewer texts per request (the project's client splits by tokens)")


# -- what internal models receive (encoders, postprocess) -----------------------------------
def _integer(array) -> bool:
    if hasattr(array, "is_floating_point"):  # torch
        return not array.is_floating_point() and not array.is_complex() and str(array.dtype) != "torch.bool"
    return np.issubdtype(array.dtype, np.integer)


def check_token_batch(ids, mask, vocab_size: int, max_length: int):
    """input_ids / attention_mask [n, T] from a tokenizer: returns the real length of each row."""
    for name, array in ((INPUT_IDS, ids), (ATTENTION_MASK, mask)):
        if array is None:
            raise InvalidArgument(name, "is required")
        if len(array.shape) != 2 or not _integer(array):
            raise InvalidArgument(name, f"must be an integer tensor [n, T], got {list(array.shape)}")
    if tuple(ids.shape) != tuple(mask.shape):
        raise InvalidArgument(ATTENTION_MASK, f"must have the shape of {INPUT_IDS} {list(ids.shape)}, "
                              f"got {list(mask.shape)}")
    rows, length = ids.shape
    if rows == 0 or length == 0:
        raise InvalidArgument(INPUT_IDS, "must hold at least one token per row")
    if length > max_length:
        raise InvalidArgument(INPUT_IDS, f"has {length} positions, more than the maximum {max_length}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise InvalidArgument(INPUT_IDS, f"must hold token ids from 0 to {vocab_size - 1}")
    if int(mask.min()) < 0 or int(mask.max()) > 1:
        raise InvalidArgument(ATTENTION_MASK, "must hold only 0 and 1")
    if bool((mask[:, 1:] > mask[:, :-1]).any()) or int(mask[:, 0].min()) != 1:
        raise InvalidArgument(ATTENTION_MASK, "must be right-padded: ones, then zeros, at least one one per row")
    return mask.sum(1)


def check_column(values, rows: int, name: str, low: int, high: int) -> np.ndarray:
    """One integer per row [rows, 1], each from `low` to `high`."""
    values = np.asarray(values)
    if values.shape != (rows, 1) or not np.issubdtype(values.dtype, np.integer):
        raise InvalidArgument(name, f"must be an integer tensor [{rows}, 1], got {list(values.shape)}")
    if rows and (values.min() < low or values.max() > high):
        raise InvalidArgument(name, f"must be from {low} to {high}")
    return values


def check_pooled(pooled: np.ndarray, width: int) -> np.ndarray:
    """An encoder's pooled states: finite and non-zero, or an error, never a silent zero vector."""
    if pooled is None:
        raise InvalidArgument(POOLED_STATE, "is required")
    if pooled.ndim != 2 or pooled.shape[1] != width or pooled.dtype != np.float32:
        raise InvalidArgument(POOLED_STATE, f"must be FP32 [n, {width}], got {pooled.dtype}{list(pooled.shape)}")
    finite = np.isfinite(pooled).all(axis=1)
    if not finite.all():
        raise InvalidArgument(POOLED_STATE, f"row {int(np.argmin(finite))} holds NaN or Inf")
    zero = ~np.any(pooled != 0, axis=1)
    if zero.any():
        raise InvalidArgument(POOLED_STATE, f"row {int(np.argmax(zero))} is all zeros: it has no direction")
    return pooled
