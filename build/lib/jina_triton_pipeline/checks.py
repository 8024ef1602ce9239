"""What the internal models check of their inputs: each answers a direct call as strictly as
one from its own ensemble (INVALID_ARGUMENT naming the tensor, never a crash or a silent zero).

The functions take numpy arrays or torch tensors alike."""
from __future__ import annotations

import numpy as np

from jina_triton_client.validation import InvalidArgument

from .internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE


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
