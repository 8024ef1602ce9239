"""What the server must answer, computed from the reference encoder."""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import OUTPUTS
from jina_triton_pipeline.quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8


class Expected:
    def __init__(self, reference, repository, max_length):
        self.reference = reference
        self.calibration = Calibration.load(repository / "postprocess" / "1" / "calibration.npz")
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


def assert_outputs_match(got: dict, want_float: np.ndarray, calibration: Calibration,
                         want_raw: np.ndarray | None = None) -> None:
    """Every output against the reference, with the tolerances the contract states."""
    if OUTPUTS["unnormalized"] in got:
        raw = got[OUTPUTS["unnormalized"]]
        assert raw.shape == want_float.shape and raw.dtype == np.float32
        assert want_raw is not None, "compare unnormalized outputs with the reference's raw states"
        np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(want_raw, axis=1), rtol=1e-4)
        assert (np.sum(raw * want_float, axis=1) / np.linalg.norm(raw, axis=1)).min() >= 0.99999
    if OUTPUTS["float"] in got:
        floats = got[OUTPUTS["float"]]
        assert floats.shape == want_float.shape and floats.dtype == np.float32
        cosine = np.sum(floats * want_float, axis=1) / np.linalg.norm(floats, axis=1)
        assert cosine.min() >= 0.99999, cosine
    near_zero = np.abs(want_float) < 1e-6
    for name, packed in (("ubinary", to_ubinary), ("binary", to_binary)):
        if OUTPUTS[name] in got:
            assert got[OUTPUTS[name]].shape == packed(want_float).shape
            assert got[OUTPUTS[name]].dtype == packed(want_float).dtype
            bits = _bits(got[OUTPUTS[name]])[:, :want_float.shape[1]]
            assert np.all((bits == (want_float > 0)) | near_zero), name
    starts, steps = calibration.ranges(want_float.shape[1])
    scaled = (want_float - starts) / steps
    boundary = np.abs(scaled - np.round(scaled)) < 0.05  # float noise may cross a bin edge there
    for name, quantize in (("int8", to_int8), ("uint8", to_uint8)):
        if OUTPUTS[name] in got:
            want = quantize(want_float, calibration).astype(np.int16)
            diff = np.abs(got[OUTPUTS[name]].astype(np.int16) - want)
            assert got[OUTPUTS[name]].dtype == quantize(want_float, calibration).dtype
            assert np.all((diff == 0) | ((diff == 1) & boundary)), name


def _bits(packed: np.ndarray) -> np.ndarray:
    """Unpack ubinary (uint8) or binary (int8 = ubinary - 128) to one bool per dimension."""
    if packed.dtype == np.int8:
        packed = (packed.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(packed, axis=1).astype(bool)
