"""Calibrate the int8/uint8 ranges on the shipped corpus with the engines being built.

One table serves every task: postprocess is shared by the four ensembles and
cannot tell which adapter produced a vector, so the ranges span all tasks and
both input types. The table is cached in the checkpoint's cache entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from jina_triton_client.contract import INPUT_TYPES, TRUNCATE_END
from jina_triton_pipeline.packing import run_packed
from jina_triton_pipeline.quantization import Calibration
from jina_triton_pipeline.tokenization import TextTokenizer

from .cache import CacheEntry
from .checkpoint import Checkpoint
from .corpus import corpus_sentences
from .options import CPU_TOKEN_BUDGET

CALIBRATION_FILE = "calibration-v1.npz"
SAMPLE_EVERY = 4        # every 4th corpus sentence: ~100 texts, all languages
MAX_LENGTH = 512


Pooled = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def calibration_pooled(checkpoint: Checkpoint, pooled: Pooled) -> np.ndarray:
    """pooled(task, input_ids, attention_mask) -> [n, H] over the corpus sample, every task and input type."""
    tokenizer = TextTokenizer(checkpoint.path / "tokenizer.json", MAX_LENGTH)
    texts = corpus_sentences()[::SAMPLE_EVERY]
    batches = [tokenizer(texts, input_type, TRUNCATE_END) for input_type in INPUT_TYPES]
    found = []
    for task in checkpoint.tasks:
        def forward(ids, mask, task=task):
            return np.asarray(pooled(task, ids, mask), np.float32)
        # packed as the encoders pack (length-sorted, padding bounded): the ranges need every
        # row's state, not the padding of a fixed chunk
        found += run_packed([(b.input_ids, b.attention_mask) for b in batches], CPU_TOKEN_BUDGET, forward).pooled
    return np.concatenate(found)


def calibrate(checkpoint: Checkpoint, entry: CacheEntry, pooled, progress=None) -> Path:
    """The calibration file in the cache entry, computed once per checkpoint."""
    target = entry.directory / CALIBRATION_FILE
    if not target.is_file():
        if progress:
            progress("calibrating int8/uint8 ranges on the corpus")
        partial = entry.partial(target)
        with open(partial, "wb") as file:
            Calibration.fit(calibration_pooled(checkpoint, pooled)).save(file)
        entry.commit(partial, target)
    return target
