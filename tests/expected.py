"""What the server must answer, computed from the reference encoder (see jina_triton_serving.comparison)."""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import OUTPUTS
from jina_triton_pipeline.quantization import Calibration
from jina_triton_serving.comparison import Expected, compare, within_tolerance  # noqa: F401 - tests import Expected from here


def assert_outputs_match(got: dict, want_float: np.ndarray, calibration: Calibration,
                         want_raw: np.ndarray | None = None) -> None:
    """Every output against the reference, with the tolerances the contract states."""
    if OUTPUTS["unnormalized"] in got:
        assert want_raw is not None, "compare unnormalized outputs with the reference's raw states"
    report = compare(got, want_float, calibration, want_raw)
    assert report and not within_tolerance(report), (within_tolerance(report), report)
