"""How far served outputs are from the reference: one comparison for the tests and the GPU check.

Tolerances (the contract's): float cosine >= FLOAT_COSINE (fp32) or the precision's gate;
packed bits equal except where the reference value is within 1e-6 of 0; int8/uint8 equal to
quantizing the reference with the stored ranges, off by one only within 0.05 of a bin edge;
unnormalized states with the reference's norm within 1e-4 (relative).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jina_triton_client.contract import OUTPUTS
from jina_triton_pipeline.quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8

FLOAT_COSINE = 0.99999
NEAR_ZERO = 1e-6
BIN_EDGE = 0.05


def _bits(packed: np.ndarray) -> np.ndarray:
    """Unpack ubinary (uint8) or binary (int8 = ubinary - 128) to one bool per dimension."""
    if packed.dtype == np.int8:
        packed = (packed.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(packed, axis=1).astype(bool)


def compare(got: dict, want_float: np.ndarray, calibration: Calibration, want_raw: np.ndarray | None = None) -> dict:
    """Per output present in `got`: how it differs from the reference, and whether it is within tolerance."""
    report = {}
    if OUTPUTS["float"] in got:
        floats = got[OUTPUTS["float"]]
        ok = floats.shape == want_float.shape and floats.dtype == np.float32
        cosine = float((np.sum(floats * want_float, axis=1) / np.linalg.norm(floats, axis=1)).min()) if ok else -1.0
        report["float"] = {"min_cosine": cosine, "shape_ok": ok}
    if OUTPUTS["unnormalized"] in got and want_raw is not None:
        raw = got[OUTPUTS["unnormalized"]]
        ok = raw.shape == want_float.shape and raw.dtype == np.float32
        norms = np.linalg.norm(raw, axis=1) / np.linalg.norm(want_raw, axis=1) if ok else None
        norm_error = float(np.max(np.abs(norms - 1))) if ok else 1.0
        cosine = float((np.sum(raw * want_float, axis=1) / np.linalg.norm(raw, axis=1)).min()) if ok else -1.0
        report["unnormalized"] = {"min_cosine": cosine, "norm_error": norm_error, "shape_ok": ok}
    near_zero = np.abs(want_float) < NEAR_ZERO
    for name, packed in (("ubinary", to_ubinary), ("binary", to_binary)):
        if OUTPUTS[name] in got:
            value, want = got[OUTPUTS[name]], packed(want_float)
            ok = value.shape == want.shape and value.dtype == want.dtype
            flipped = ~((_bits(value)[:, :want_float.shape[1]] == (want_float > 0)) | near_zero) if ok else None
            report[name] = {"bits_off": int(flipped.sum()) if ok else -1, "shape_ok": ok}
    starts, steps = calibration.ranges(want_float.shape[1])
    scaled = (want_float - starts) / steps
    boundary = np.abs(scaled - np.round(scaled)) < BIN_EDGE  # float noise may cross a bin edge there
    for name, quantize in (("int8", to_int8), ("uint8", to_uint8)):
        if OUTPUTS[name] in got:
            value, want = got[OUTPUTS[name]], quantize(want_float, calibration)
            ok = value.shape == want.shape and value.dtype == want.dtype
            diff = np.abs(value.astype(np.int16) - want.astype(np.int16)) if ok else None
            report[name] = {"max_diff": int(diff.max()) if ok else -1,
                            "off_beyond_edges": int(np.sum(~((diff == 0) | ((diff == 1) & boundary)))) if ok else -1,
                            "shape_ok": ok}
    return report


def within_tolerance(report: dict, float_cosine: float = FLOAT_COSINE) -> list[str]:
    """The outputs that miss their tolerance (empty: all good)."""
    misses = []
    for name, found in report.items():
        if not found["shape_ok"]:
            misses.append(f"{name}: wrong shape or dtype")
        elif name in ("float", "unnormalized") and found["min_cosine"] < float_cosine:
            misses.append(f"{name}: min cosine {found['min_cosine']:.7f} < {float_cosine}")
        elif name == "unnormalized" and found["norm_error"] > 1e-4:
            misses.append(f"{name}: norm off by {found['norm_error']:.2e}")
        elif name in ("binary", "ubinary") and found["bits_off"]:
            misses.append(f"{name}: {found['bits_off']} bits differ")
        elif name in ("int8", "uint8") and found["off_beyond_edges"]:
            misses.append(f"{name}: {found['off_beyond_edges']} values off beyond bin edges")
    return misses


class Expected:
    """What the server must answer for some texts, from the reference encoder (cached per call shape)."""

    def __init__(self, reference, repository, max_length):
        self.reference = reference
        self.calibration = Calibration.load(Path(repository) / "postprocess" / "1" / "calibration.npz")
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
