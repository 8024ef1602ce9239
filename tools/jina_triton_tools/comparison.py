"""How served outputs compare with the reference: one comparison for the tests and the GPU check.

Precision-aware and still strict:
- float        cosine to the reference's embedding >= the precision's gate (fp32 0.99999, fp16
               0.9999, bf16 0.999), and unit length within 1e-5;
- unnormalized the same cosine, and a norm within NORM_TOLERANCE of the reference's;
- quantized    (int8, uint8, binary, ubinary) exactly equal to quantizing the *served* float with
               the formula written below (sentence-transformers' `quantize_embeddings`, ranges
               from the repository's calibration.npz; clipped where it would wrap), never with
               the served code. Half precision moves components by ~1e-4, which legitimately
               flips a sign bit or an int8 bin near an edge against the fp32 reference; against
               the served float nothing may differ at any precision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jina_triton_client.contract import MIN_DIMENSIONS, OUTPUTS
from jina_triton_pipeline.parity import GATES  # the contract's minimum cosines per precision

NORM_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}   # unnormalized norm, relative
UNIT_LENGTH = 1e-5
QUANTIZED = ("int8", "uint8", "binary", "ubinary")


def quantize(floats: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> dict[str, np.ndarray]:
    """What each quantized output must hold for these float embeddings [n, d]: `minimum`/`maximum`
    are the calibration tables [widths, H] (row k for width MIN_DIMENSIONS + k)."""
    floats = np.asarray(floats, np.float32)
    width = floats.shape[1]
    start = minimum[width - MIN_DIMENSIONS, :width].astype(np.float32)
    step = (maximum[width - MIN_DIMENSIONS, :width].astype(np.float32) - start) / np.float32(255)
    step = np.where(step > 0, step, np.float32(1.0)).astype(np.float32)
    scaled = (floats - start) / step
    bits = np.packbits(floats > 0, axis=-1)
    return {"uint8": np.clip(scaled, 0, 255).astype(np.uint8),
            "int8": np.clip(scaled - 128, -128, 127).astype(np.int8),
            "ubinary": bits, "binary": (bits.astype(np.int16) - 128).astype(np.int8)}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def compare(got: dict, want_float: np.ndarray, tables: tuple[np.ndarray, np.ndarray],
            want_raw: np.ndarray | None = None, precision: str = "fp32") -> dict:
    """Per output present in `got`: what was found, and `misses` (empty: within tolerance)."""
    report, misses = {}, []
    gate = GATES[precision]
    floats = got.get(OUTPUTS["float"])
    if floats is not None:
        ok = floats.shape == want_float.shape and floats.dtype == np.float32
        cosine = float(_cosines(floats, want_float).min()) if ok else -1.0
        unit = float(np.max(np.abs(np.linalg.norm(floats.astype(np.float64), axis=1) - 1))) if ok else 1.0
        report["float"] = {"min_cosine": cosine, "unit_error": unit}
        misses += [] if ok else ["float: wrong shape or dtype"]
        misses += [f"float: min cosine {cosine:.7f} < {gate}"] if ok and not cosine >= gate else []
        misses += [f"float: norm off unit length by {unit:.2e}"] if ok and not unit <= UNIT_LENGTH else []
    raw = got.get(OUTPUTS["unnormalized"])
    if raw is not None and want_raw is not None:
        ok = raw.shape == want_raw.shape and raw.dtype == np.float32
        cosine = float(_cosines(raw, want_raw).min()) if ok else -1.0
        norm = float(np.max(np.abs(np.linalg.norm(raw, axis=1) / np.linalg.norm(want_raw, axis=1) - 1))) if ok \
            else 1.0
        report["unnormalized"] = {"min_cosine": cosine, "norm_error": norm}
        misses += [] if ok else ["unnormalized: wrong shape or dtype"]
        misses += [f"unnormalized: min cosine {cosine:.7f} < {gate}"] if ok and not cosine >= gate else []
        misses += [f"unnormalized: norm off by {norm:.2e}"] if ok and not norm <= NORM_TOLERANCE[precision] else []
    present = [name for name in QUANTIZED if OUTPUTS[name] in got]
    if present:
        if floats is None:
            raise ValueError("quantized outputs are checked against the served float: ask for it too")
        want = quantize(floats, *tables)
        for name in present:
            value = got[OUTPUTS[name]]
            ok = value.shape == want[name].shape and value.dtype == want[name].dtype
            differ = int(np.sum(value != want[name])) if ok else -1
            report[name] = {"values_off": differ}
            misses += [f"{name}: wrong shape or dtype"] if not ok else []
            misses += [f"{name}: {differ} values differ from quantizing the served float"] if differ > 0 else []
    report["misses"] = misses
    return report


def calibration_tables(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """The int8/uint8 ranges the repository serves (data, read without the served code)."""
    with np.load(Path(repository) / "postprocess" / "1" / "calibration.npz") as data:
        return data["minimum"], data["maximum"]


class Expected:
    """What the server must answer for some texts, from the reference encoder (cached per call shape)."""

    def __init__(self, reference, repository, max_length):
        self.reference = reference
        self.tables = calibration_tables(repository)
        self.max_length = max_length
        self._cache = {}

    def raw(self, texts, task, input_type, dimensions, truncate) -> np.ndarray:
        """The reference's last-token states, Matryoshka-sliced, before normalization."""
        key = (tuple(texts), task, input_type, truncate)
        if key not in self._cache:
            batch = self.reference.tokenize(list(texts), input_type, truncate, self.max_length)
            self._cache[key] = self.reference.pooled(task, batch)
        return self._cache[key][:, :dimensions]

    def floats(self, texts, task, input_type, dimensions, truncate) -> np.ndarray:
        pooled = self.raw(texts, task, input_type, dimensions, truncate)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def token_counts(self, texts, input_type, truncate):
        return self.reference.token_counts(list(texts), input_type, truncate, self.max_length)
