"""Pack the texts of many requests into length-sorted passes under a token budget.

Triton's dynamic batcher hands an encoder several requests whose tensors have
different sequence lengths (allow_ragged_batch). Concatenating them padded to the
longest would waste most of the compute on mixed traffic, so rows are sorted by real
length and cut into chunks whose padded size (rows x longest) stays within a token
budget and a padding bound, as TEI does.

The work is vectorized: every request's real tokens are laid back to back once (on the
engine's device), each pass gathers its rows from there, writes its pooled states into
one output buffer, and the buffer comes back to the host once per execute.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MAX_PADDING = 1.10  # the cpu target's bound: padded tokens / real tokens inside one chunk
# What a pass costs before its first token, in tokens: it streams every weight once however few its
# rows (measured on one thread of the full replica: ~28 ms fp32 / ~9 ms int8, the time of ~26 / ~23
# tokens). Padding up to that much is cheaper than one more pass.
PASS_TOKENS = 24


def plan_chunks(lengths: np.ndarray, token_budget: int, max_padding: float = MAX_PADDING,
                pass_tokens: int = PASS_TOKENS) -> list[np.ndarray]:
    """Row indices per chunk, in ascending length.

    A chunk closes when the next row would push rows x longest over the token
    budget, or its padding over both `max_padding` x the real tokens and
    `pass_tokens` (a chunk always takes at least one row). On a CPU a smaller
    batch costs little per token, padding costs in full, so waste is what gets
    bounded; but a few padded tokens cost less than another pass, which is what
    short queries arriving one per request would otherwise each take.
    """
    order = np.argsort(lengths, kind="stable")
    chunks, current, real = [], [], 0
    for row in order:
        length = int(lengths[row])
        padded = (len(current) + 1) * length
        waste = padded - real - length
        if current and (padded > token_budget or waste > max((max_padding - 1) * (real + length), pass_tokens)):
            chunks.append(np.array(current))
            current, real = [], 0
        current.append(row)
        real += length
    if current:
        chunks.append(np.array(current))
    return chunks


class NumpyPasses:
    """Passes built from the host's arrays: what the onnxruntime engines take.

    A pass builder `stage`s every request's real tokens back to back, with each row's start and
    length and the order in which the passes take the rows; `gather` builds one pass from
    there, `scatter` puts its pooled states in place, `finish` hands the output to the host.
    `on_host`: the output is on the host after every pass, so a request can be answered as soon
    as its last row is computed."""

    on_host = True

    @staticmethod
    def lengths(mask) -> np.ndarray:
        return np.asarray(mask).sum(axis=1).astype(np.int64)

    @staticmethod
    def stage(requests: list[tuple], starts: np.ndarray, lengths: np.ndarray, order: np.ndarray):
        flat = np.concatenate([np.asarray(ids)[np.asarray(mask).astype(bool)] for ids, mask in requests])
        return flat, starts, lengths, order

    @staticmethod
    def reorder(staged, order: np.ndarray):
        return (*staged[:3], order)

    @staticmethod
    def gather(staged, begin: int, end: int, longest: int):
        """ids, mask [end - begin, longest] of the rows order[begin:end]."""
        flat, starts, lengths, order = staged
        taken = order[begin:end]
        steps = np.arange(longest)
        mask = steps[None, :] < lengths[taken][:, None]
        ids = np.where(mask, flat[np.minimum(starts[taken][:, None] + steps[None, :], len(flat) - 1)], 0)
        return ids.astype(np.int64), mask.astype(np.int64)

    @staticmethod
    def output(count: int, width: int):
        return np.zeros((count, width), np.float32)

    @staticmethod
    def scatter(out, staged, begin: int, end: int, pooled) -> None:
        out[staged[3][begin:end]] = pooled

    @staticmethod
    def finish(out):
        return out


@dataclass
class Packed:
    pooled: list            # per request: [n_i, H] on the host, or None when it was dropped
    encode_us: list[int]    # per request: its share of the execute's compute, by real tokens
    computed_tokens: int = 0
    real_tokens: int = 0
    passes: int = 0


def run_packed(requests: list[tuple], token_budget: int, forward: Callable, passes=NumpyPasses,
               keep: Callable[[int], bool] = lambda index: True, max_padding: float = MAX_PADDING,
               done: Callable[[int, np.ndarray, int], None] | None = None) -> Packed:
    """Run `forward(ids, mask) -> pooled [b, H]` over the rows of every request.

    `requests` holds (input_ids [n_i, T_i], attention_mask [n_i, T_i]) pairs, right-padded;
    the result holds one pooled array [n_i, H] per request. `keep(i)` is asked before each
    pass for the requests in it: the rows of one it turns down (cancelled, past its deadline)
    are left out of every later pass. Where the passes leave their output on the host,
    `done(i, pooled, encode_us)` is called as soon as request i's last row is computed (the
    short texts of an execute come first, so their callers need not wait for its long ones).
    """
    result = Packed([None] * len(requests), [0] * len(requests))
    if not requests:
        return result
    started = time.perf_counter()
    counts = [passes.lengths(mask) for _, mask in requests]
    lengths = np.concatenate(counts)
    sizes = np.array([len(c) for c in counts], np.int64)  # rows of each request
    owners = np.repeat(np.arange(len(requests)), sizes)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    firsts = np.cumsum(sizes) - sizes  # each request's first row in the output
    rows_left = sizes.copy()
    early = done is not None and getattr(passes, "on_host", False)
    dropped: set[int] = set()
    todo = np.arange(len(lengths))
    staged, out = None, None
    while len(todo):
        chunks = plan_chunks(lengths[todo], token_budget, max_padding)
        order = todo[np.concatenate(chunks)]
        staged = passes.stage(requests, starts, lengths, order) if staged is None else passes.reorder(staged, order)
        begin, replan = 0, False
        for chunk in chunks:
            end = begin + len(chunk)
            turned_down = {int(i) for i in set(owners[order[begin:end]].tolist()) - dropped if not keep(int(i))}
            if turned_down:
                dropped |= turned_down
                todo = order[begin:][~np.isin(owners[order[begin:]], list(dropped))]
                replan = True
                break
            longest = int(lengths[order[begin:end]].max())
            pooled = forward(*passes.gather(staged, begin, end, longest))
            if out is None:
                out = passes.output(len(lengths), pooled.shape[1])
            passes.scatter(out, staged, begin, end, pooled)
            result.computed_tokens += (end - begin) * longest
            result.real_tokens += int(lengths[order[begin:end]].sum())
            result.passes += 1
            if early:
                np.subtract.at(rows_left, owners[order[begin:end]], 1)
                for index in np.unique(owners[order[begin:end]]).tolist():
                    if rows_left[index] == 0:
                        _settle(result, index, out[firsts[index]:firsts[index] + sizes[index]].copy(),
                                started, float(counts[index].sum()))
                        done(index, result.pooled[index], result.encode_us[index])
            begin = end
        if not replan:
            break
    host = passes.finish(out) if out is not None else None
    for index, count in enumerate(counts):
        if index not in dropped and host is not None and result.pooled[index] is None:
            _settle(result, index, host[firsts[index]:firsts[index] + sizes[index]], started, float(count.sum()))
    return result


def _settle(result: Packed, index: int, pooled, started: float, real: float) -> None:
    """Request `index` computed: its pooled states, and its share (by real tokens) of the time so far."""
    result.pooled[index] = pooled
    result.encode_us[index] = int((time.perf_counter() - started) * 1e6 * real / max(1, result.real_tokens))
