"""The parity gate: an engine proves at load that it computes what the reference does.

The build stores the reference path's pooled states (CPU fp32, peft unmerged) of a few
verification texts per task; an engine that misses them by more than its precision's
gate refuses to load.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pooling import min_cosine

PARITY_FILE = "parity.npz"
# minimum cosine to the fp32 reference over Matryoshka widths 32, 256, 768
GATES = {"fp32": 0.99999, "fp16": 0.9999, "bf16": 0.999}


class ParityError(RuntimeError):
    pass


@dataclass
class ParityCheck:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    reference: np.ndarray   # pooled [n, H], fp32

    def save(self, path: Path) -> None:
        np.savez(path, input_ids=self.input_ids, attention_mask=self.attention_mask, reference=self.reference)

    @classmethod
    def load(cls, path: Path) -> "ParityCheck":
        with np.load(path) as data:
            return cls(data["input_ids"], data["attention_mask"], data["reference"])

    def gate(self, pooled: np.ndarray, precision: str, what: str) -> float:
        """The minimum cosine of `pooled` to the reference; raises below the precision's gate."""
        cosine = min_cosine(np.asarray(pooled, np.float32), self.reference)
        threshold = GATES[precision]
        if not cosine >= threshold:  # NaN fails too
            raise ParityError(f"{what}: parity gate failed, minimum cosine {cosine:.7f} to the reference is "
                              f"below {threshold} ({precision}); refusing to serve")
        return cosine
