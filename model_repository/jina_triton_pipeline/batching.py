"""Pack the texts of many requests into length-sorted sub-batches under a token budget.

Triton's dynamic batcher hands the encoder several requests whose tensors have
different sequence lengths (allow_ragged_batch). Concatenating them padded to
the longest would waste most of the compute on mixed traffic, so rows are
sorted by real length and cut into chunks whose padded size (rows x longest)
stays within a token budget, as TEI does.
"""
from __future__ import annotations

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


def run_packed(requests: list[tuple[np.ndarray, np.ndarray]], token_budget: int,
               forward: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Run `forward(ids, mask) -> hidden [b, t, H]` over every request's rows.

    `requests` holds (input_ids [n_i, T_i], attention_mask [n_i, T_i]) pairs; the
    result holds one hidden-state array [n_i, T_i, H] per request, zero where padded.
    """
    rows_ids, rows_len, owners = [], [], []
    for index, (ids, mask) in enumerate(requests):
        lengths = mask.sum(axis=1)
        for row in range(ids.shape[0]):
            rows_ids.append(ids[row, :lengths[row]])
            rows_len.append(int(lengths[row]))
            owners.append((index, row))
    lengths = np.array(rows_len)
    hidden_rows: list = [None] * len(rows_ids)
    for chunk in plan_chunks(lengths, token_budget):
        longest = int(lengths[chunk].max())
        ids = np.zeros((len(chunk), longest), np.int64)
        mask = np.zeros((len(chunk), longest), np.int64)
        for i, row in enumerate(chunk):
            ids[i, :lengths[row]] = rows_ids[row]
            mask[i, :lengths[row]] = 1
        hidden = forward(ids, mask)
        for i, row in enumerate(chunk):
            hidden_rows[row] = hidden[i, :lengths[row]]
    width = hidden_rows[0].shape[-1] if hidden_rows else 0
    outputs = [np.zeros((ids.shape[0], ids.shape[1], width), np.float32) for ids, _ in requests]
    for (index, row), hidden in zip(owners, hidden_rows):
        outputs[index][row, :hidden.shape[0]] = hidden
    return outputs
