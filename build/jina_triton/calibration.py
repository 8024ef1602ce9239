"""Calibrate the int8/uint8 ranges on the shipped corpus with the fp32 engines.

One table serves every task: postprocess is shared by the four ensembles and
cannot tell which adapter produced a vector, so the ranges span all tasks and
both input types.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jina_triton_client.contract import INPUT_TYPES, TRUNCATE_END
from jina_triton_pipeline.quantization import Calibration
from jina_triton_pipeline.tokenization import TextTokenizer

from .checkpoint import Checkpoint
from .corpus import corpus_sentences
from .engines import EngineSet, ort_session, pooled_from_session

CALIBRATION_FILE = "calibration-v1.npz"
SAMPLE_EVERY = 4        # every 4th corpus sentence: ~100 texts, all languages
CHUNK = 16
MAX_LENGTH = 512


def calibration_pooled(checkpoint: Checkpoint, engines: EngineSet) -> np.ndarray:
    tokenizer = TextTokenizer(checkpoint.path / "tokenizer.json", MAX_LENGTH)
    texts = sorted(corpus_sentences()[::SAMPLE_EVERY], key=len)
    pooled = []
    for task in checkpoint.tasks:
        session = ort_session(engines.path(task, "fp32"))
        for input_type in INPUT_TYPES:
            for start in range(0, len(texts), CHUNK):
                batch = tokenizer(texts[start:start + CHUNK], input_type, TRUNCATE_END)
                pooled.append(pooled_from_session(session, batch.input_ids, batch.attention_mask))
    return np.concatenate(pooled)


def calibrate(checkpoint: Checkpoint, engines: EngineSet, progress=None) -> Path:
    """The calibration file in the engine cache, computed once per checkpoint."""
    target = engines.directory / CALIBRATION_FILE
    if not target.is_file():
        if progress:
            progress("calibrating int8/uint8 ranges on the corpus")
        Calibration.fit(calibration_pooled(checkpoint, engines)).save(target.with_suffix(".partial.npz"))
        target.with_suffix(".partial.npz").replace(target)
    return target
