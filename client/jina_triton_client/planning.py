"""Cut a call's texts into requests the server admits, and put the answers back in order."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .contract import (
    DEFAULT_INPUT_TYPE, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_TOKENS, TIMING_PARTS, token_upper_bound)
from .errors import EmbeddingError


@dataclass(frozen=True)
class Limits:
    """The server's per-request limits (the contract's defaults unless the server was built lower)."""
    max_texts: int = DEFAULT_MAX_BATCH_SIZE
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_tokens: int = DEFAULT_MAX_REQUEST_TOKENS
    max_length: int = DEFAULT_MAX_LENGTH


def plan_batches(texts: list[str], limits: Limits = Limits(),
                 input_type: str = DEFAULT_INPUT_TYPE) -> list[list[int]]:
    """Indices per request, sorted by length so each request pads little.

    A request closes before it would exceed the texts, bytes or tokens per request;
    tokens are counted by their upper bound, so no valid text is refused for the packing.
    """
    sizes = [len(text.encode("utf-8")) for text in texts]
    tokens = [token_upper_bound(text, input_type, limits.max_length) for text in texts]
    batches, current, used_bytes, used_tokens = [], [], 0, 0
    for index in sorted(range(len(texts)), key=lambda i: sizes[i]):
        if current and (len(current) == limits.max_texts or used_bytes + sizes[index] > limits.max_bytes
                        or used_tokens + tokens[index] > limits.max_tokens):
            batches.append(current)
            current, used_bytes, used_tokens = [], 0, 0
        current.append(index)
        used_bytes += sizes[index]
        used_tokens += tokens[index]
    return batches + ([current] if current else [])


@dataclass
class Embedded:
    """What one call returns: rows in input order, their token counts, the slowest request's timings."""
    embeddings: np.ndarray
    token_counts: np.ndarray
    timings_ms: dict = field(default_factory=dict)   # tokenize/encode/postprocess/request, if asked for


class Assembler:
    """Puts each request's rows back at their input positions."""

    def __init__(self, size: int):
        self.size = size
        self.embeddings = None
        self.token_counts = np.zeros(size, np.int32)
        self.timings_ms: dict = {}

    def add(self, indices: list[int], embeddings: np.ndarray, token_counts: np.ndarray,
            timings_us: np.ndarray | None = None, request_ms: float = 0.0) -> None:
        if embeddings is None or len(embeddings) != len(indices) or token_counts is None \
                or token_counts.size != len(indices):
            got = None if embeddings is None else len(embeddings)
            raise EmbeddingError("INTERNAL", f"the server answered {got} rows for {len(indices)} texts")
        if self.embeddings is None:
            self.embeddings = np.empty((self.size, embeddings.shape[1]), embeddings.dtype)
        elif embeddings.shape[1:] != self.embeddings.shape[1:] or embeddings.dtype != self.embeddings.dtype:
            raise EmbeddingError("INTERNAL", f"the server answered {embeddings.dtype}{list(embeddings.shape)} "
                                 f"after {self.embeddings.dtype}{list(self.embeddings.shape)}")
        self.embeddings[indices] = embeddings
        self.token_counts[indices] = token_counts.reshape(-1)
        if timings_us is not None and len(timings_us) and request_ms >= self.timings_ms.get("request", -1.0):
            # the slowest request is the call's critical path
            self.timings_ms = {part: float(timings_us[0][i]) / 1000 for i, part in enumerate(TIMING_PARTS)}
            self.timings_ms["request"] = request_ms

    def result(self) -> Embedded:
        if self.embeddings is None:  # no texts at all
            self.embeddings = np.empty((0, 0), np.float32)
        return Embedded(self.embeddings, self.token_counts, self.timings_ms)
