"""Last-token pooling, Matryoshka truncation and L2 normalization: the one implementation
every engine, model and tool calls (the reference encoder keeps its own, independent one)."""
from __future__ import annotations

import numpy as np


def last_token(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """hidden [n, T, H], real lengths [n] or [n, 1] -> the state at each text's EOS [n, H]."""
    last = np.asarray(lengths).reshape(-1).astype(np.int64) - 1
    return hidden[np.arange(hidden.shape[0]), last]


def last_token_torch(hidden, lengths):
    """The same on torch tensors (inside an exported graph or on the GPU)."""
    import torch

    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths.reshape(-1).long() - 1]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero row stays zero (callers refuse it first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def matryoshka(pooled: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first `dimensions` values, then L2-normalize."""
    return normalize(pooled[:, :dimensions])


def cosines(a: np.ndarray, b: np.ndarray, dimensions: int) -> np.ndarray:
    """Row cosines of two pooled matrices at one Matryoshka width."""
    return np.sum(matryoshka(a, dimensions) * matryoshka(b, dimensions), axis=1)


def min_cosine(a: np.ndarray, b: np.ndarray, dimensions=(32, 256, 768)) -> float:
    """The smallest row cosine over the Matryoshka widths that both matrices have."""
    widths = [d for d in dimensions if d <= min(a.shape[1], b.shape[1])]
    return float(min(cosines(a, b, d).min() for d in widths))
