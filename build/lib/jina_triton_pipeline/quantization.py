"""int8/uint8/binary/ubinary outputs with sentence-transformers `quantize_embeddings` semantics.

int8/uint8 use per-dimension [min, max] ranges calibrated at build time; since
the values after Matryoshka truncation and re-normalization depend on the width,
there is one range table per width (32..H). Values outside the calibrated range
are clipped (sentence-transformers would wrap around).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jina_triton_client.contract import MIN_DIMENSIONS

from .pooling import matryoshka


@dataclass
class Calibration:
    minimum: np.ndarray  # [H - MIN_DIMENSIONS + 1, H]: row k is for width MIN_DIMENSIONS + k
    maximum: np.ndarray

    @classmethod
    def fit(cls, pooled: np.ndarray) -> "Calibration":
        """Ranges of the normalized embeddings of `pooled` [n, H], for every width."""
        width = pooled.shape[1]
        rows = width - MIN_DIMENSIONS + 1
        minimum = np.zeros((rows, width), np.float32)
        maximum = np.zeros((rows, width), np.float32)
        for k in range(rows):
            dims = MIN_DIMENSIONS + k
            vectors = matryoshka(pooled, dims)
            minimum[k, :dims] = vectors.min(axis=0)
            maximum[k, :dims] = vectors.max(axis=0)
        return cls(minimum, maximum)

    def ranges(self, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, steps) for a width, as sentence-transformers computes them."""
        k = dimensions - MIN_DIMENSIONS
        starts = self.minimum[k, :dimensions]
        steps = (self.maximum[k, :dimensions] - starts) / 255
        return starts, np.where(steps > 0, steps, np.float32(1.0)).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, minimum=self.minimum, maximum=self.maximum)

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        with np.load(path) as data:
            return cls(data["minimum"], data["maximum"])


def to_uint8(embeddings: np.ndarray, calibration: Calibration) -> np.ndarray:
    starts, steps = calibration.ranges(embeddings.shape[1])
    return np.clip((embeddings - starts) / steps, 0, 255).astype(np.uint8)


def to_int8(embeddings: np.ndarray, calibration: Calibration) -> np.ndarray:
    starts, steps = calibration.ranges(embeddings.shape[1])
    return np.clip((embeddings - starts) / steps - 128, -128, 127).astype(np.int8)


def to_ubinary(embeddings: np.ndarray) -> np.ndarray:
    """packbits(x > 0): ceil(d/8) bytes, a last partial byte padded with zero bits."""
    return np.packbits(embeddings > 0, axis=-1)


def to_binary(embeddings: np.ndarray) -> np.ndarray:
    return (to_ubinary(embeddings).astype(np.int16) - 128).astype(np.int8)
