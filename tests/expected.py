"""What the server must answer: the reference encoder's embeddings, and the quantized outputs as the
formula in jina_triton_tools.comparison computes them from the served float (not the served code)."""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import OUTPUTS
from jina_triton_tools.comparison import Expected, compare  # noqa: F401 - tests import Expected from here


def assert_outputs_match(got: dict, want_float: np.ndarray, tables, want_raw: np.ndarray | None = None,
                         precision: str = "fp32") -> None:
    """Every output against the reference, with the tolerances the contract states."""
    if OUTPUTS["unnormalized"] in got:
        assert want_raw is not None, "compare unnormalized outputs with the reference's raw states"
    report = compare(got, want_float, tables, want_raw, precision)
    assert not report["misses"], report
