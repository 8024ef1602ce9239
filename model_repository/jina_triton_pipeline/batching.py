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


def plan_chunks(lengths: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Row indices per chunk: ascending length, rows x longest <= budget (one row at least)."""
    order = np.argsort(lengths, kind="stable")
    chunks, current = [], []
    for row in order:
        if current and (len(current) + 1) * int(lengths[row]) > token_budget:
            chunks.append(np.array(current))
            current = []
        current.append(row)
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
