"""The `cpu` target's engine: a task's merged encoder as an ONNX graph that pools in the graph,
on onnxruntime's CPU provider, and the one place sessions are set up (build, bench, serving)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE
from .packing import NumpyPasses


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime session on the CPU: `threads` intra-op threads (default: up to 2), one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 2)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, input_ids, attention_mask) -> np.ndarray:
    return session.run([POOLED_STATE], {INPUT_IDS: np.asarray(input_ids, np.int64),
                                        ATTENTION_MASK: np.asarray(attention_mask, np.int64)})[0]


class OnnxEngine:
    """A task's merged encoder as an ONNX graph that pools in the graph, on onnxruntime (CPU)."""

    passes = NumpyPasses

    def __init__(self, path: Path, threads: int, vocab_size: int):
        self.session = ort_session(path, threads)
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask):
        return run_session(self.session, input_ids, attention_mask)
