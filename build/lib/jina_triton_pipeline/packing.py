"""Pack the texts of many requests into length-sorted sub-batches under a token budget.

Triton's dynamic batcher hands the encoder several requests whose tensors have
different sequence lengths (allow_ragged_batch). Concatenating them padded to
the longest would waste most of the compute on mixed traffic, so rows are
sorted by real length and cut into chunks whose padded size (rows x longest)
stays within a token budget, as TEI does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


MAX_PADDING = 1.10  # padded tokens / real tokens allowed inside one chunk


def plan_chunks(lengths: np.ndarray, token_budget: int, max_padding: float = MAX_PADDING) -> list[np.ndarray]:
    """Row indices per chunk, in ascending length.

    A chunk closes when the next row would push rows x longest over the token
    budget, or its padding over `max_padding` x the real tokens (a chunk always
    takes at least one row). On a CPU a smaller batch costs little per token,
    padding costs in full, so waste is what gets bounded.
    """
    order = np.argsort(lengths, kind="stable")
    chunks, current, real = [], [], 0
    for row in order:
        length = int(lengths[row])
        padded = (len(current) + 1) * length
        if current and (padded > token_budget or padded > max_padding * (real + length)):
            chunks.append(np.array(current))
            current, real = [], 0
        current.append(row)
        real += length
    if current:
        chunks.append(np.array(current))
    return chunks


class NumpyRows:
    """Where packed chunks and pooled outputs live: numpy on the CPU."""

    @staticmethod
    def lengths(mask) -> np.ndarray:
        return np.asarray(mask).sum(axis=1).astype(np.int64)

    @staticmethod
    def ids(rows: int, length: int):
        return np.zeros((rows, length), np.int64), np.zeros((rows, length), np.int64)

    @staticmethod
    def output(rows: int, width: int):
        return np.zeros((rows, width), np.float32)


@dataclass
class Packed:
    pooled: list            # per request: [n_i, H], or None when it was dropped
    encode_us: list[int]    # per request: its share of the compute, by real tokens
    computed_tokens: int = 0
    real_tokens: int = 0


def run_packed(requests: list[tuple], token_budget: int, forward: Callable, rows=NumpyRows,
               keep: Callable[[int], bool] = lambda index: True, max_padding: float = MAX_PADDING) -> Packed:
    """Run `forward(ids, mask) -> pooled [b, H]` over the rows of every request.

    `requests` holds (input_ids [n_i, T_i], attention_mask [n_i, T_i]) pairs, right-padded;
    the result holds one pooled array [n_i, H] per request. `keep(i)` is asked before each
    pass: a request it turns down (cancelled, past its deadline) costs no further compute.
    """
    owners, sources = [], []
    for index, (ids, mask) in enumerate(requests):
        for row, length in enumerate(rows.lengths(mask).tolist()):
            owners.append(index)
            sources.append((ids, row, int(length)))
    lengths = np.array([length for _, _, length in sources], dtype=np.int64)
    result = Packed([None] * len(requests), [0] * len(requests))
    dropped = set()
    for chunk in plan_chunks(lengths, token_budget, max_padding):
        for index in {owners[row] for row in chunk} - dropped:
            if not keep(index):
                dropped.add(index)
        chunk = [row for row in chunk if owners[row] not in dropped]
        if not chunk:
            continue
        longest = int(lengths[chunk].max())
        ids, mask = rows.ids(len(chunk), longest)
        for i, row in enumerate(chunk):
            source, source_row, length = sources[row]
            ids[i, :length] = source[source_row, :length]
            mask[i, :length] = 1
        started = time.perf_counter()
        pooled = forward(ids, mask)
        seconds = time.perf_counter() - started
        real = int(lengths[chunk].sum())
        result.computed_tokens += len(chunk) * longest
        result.real_tokens += real
        for i, row in enumerate(chunk):
            index = owners[row]
            if result.pooled[index] is None:
                result.pooled[index] = rows.output(requests[index][0].shape[0], pooled.shape[1])
            result.pooled[index][sources[row][1]] = pooled[i]
            result.encode_us[index] += int(seconds * 1e6 * int(lengths[row]) / real)
    for index in dropped:
        result.pooled[index] = None
    return result
