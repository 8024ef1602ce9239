"""Last-token pooling and Matryoshka truncation."""
from __future__ import annotations

import numpy as np


def last_token(hidden: np.ndarray, token_count: np.ndarray) -> np.ndarray:
    """hidden [n, T, H], token_count [n] or [n, 1] -> the state at each text's EOS [n, H]."""
    last = np.asarray(token_count).reshape(-1).astype(np.int64) - 1
    return hidden[np.arange(hidden.shape[0]), last]


def matryoshka(pooled: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first `dimensions` values, then L2-normalize (float32)."""
    sliced = pooled[:, :dimensions].astype(np.float32)
    norms = np.linalg.norm(sliced, axis=1, keepdims=True)
    return sliced / np.where(norms > 0, norms, 1.0)
