"""The preprocess and postprocess steps as plain functions of arrays and parameters.

Their model.py files only move tensors in and out; everything a request can get
wrong is checked here and raised as InvalidArgument naming the field.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jina_triton_client.contract import (
    OUTPUT_BINARY, OUTPUT_FLOAT, OUTPUT_INT8, OUTPUT_UBINARY, OUTPUT_UINT8, OUTPUT_UNNORMALIZED, TEXT, TIMINGS,
    TOKEN_COUNT)
from jina_triton_client.validation import parse_options

from .heap import release_free_memory
from .limits import ModelLimits, check_column, check_pooled, decode_texts
from .internals import ATTENTION_MASK, ENCODE_US, INPUT_IDS, TOKENIZE_US
from .pooling import matryoshka
from .quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8
from .tokenization import TextTokenizer


MAX_MICROSECONDS = 24 * 3600 * 10**6


def _per_text(count: int, microseconds: float) -> np.ndarray:
    return np.full((count, 1), int(microseconds), np.int64)


@dataclass
class Preprocessor:
    """Prefix, tokenize and truncate one request's texts, within its limits."""
    tokenizer: TextTokenizer
    limits: ModelLimits
    width: int
    buckets: tuple = ()

    @classmethod
    def load(cls, tokenizer_file: Path, limits: ModelLimits, **settings) -> "Preprocessor":
        step = cls(TextTokenizer(tokenizer_file, limits.max_length), limits, **settings)
        release_free_memory()  # parsing tokenizer.json leaves ~90 MB freed but resident
        return step

    def __call__(self, text: np.ndarray | None, parameters: dict) -> dict:
        started = time.perf_counter()
        options = parse_options(parameters, self.width)
        texts = decode_texts(text, TEXT, self.limits.max_text_bytes, self.limits.max_request_bytes)
        batch = self.tokenizer(texts, options.input_type, options.truncate, self.buckets,
                               self.limits.max_request_tokens)
        return {INPUT_IDS: batch.input_ids, ATTENTION_MASK: batch.attention_mask, TOKEN_COUNT: batch.token_count,
                TOKENIZE_US: _per_text(len(texts), (time.perf_counter() - started) * 1e6)}


@dataclass
class Postprocessor:
    """Matryoshka, normalize and quantize one request's pooled states.

    Inside an ensemble a step cannot tell which outputs the client asked for
    (Triton 2.51 lists every output the ensemble step maps, not the client's), so every output
    is computed; all are cheap.
    """
    calibration: Calibration
    width: int
    max_length: int

    def __call__(self, pooled: np.ndarray | None, token_count, tokenize_us, encode_us, parameters: dict) -> dict:
        started = time.perf_counter()
        options = parse_options(parameters, self.width)
        pooled = check_pooled(pooled, self.width)
        count = pooled.shape[0]
        counts = check_column(token_count, count, TOKEN_COUNT, 1, self.max_length)
        spent = [np.zeros((count, 1), np.int64) if value is None
                 else check_column(value, count, name, 0, MAX_MICROSECONDS).astype(np.int64)
                 for name, value in ((TOKENIZE_US, tokenize_us), (ENCODE_US, encode_us))]
        vectors = matryoshka(pooled, options.dimensions)
        outputs = {OUTPUT_FLOAT: vectors, OUTPUT_INT8: to_int8(vectors, self.calibration),
                   OUTPUT_UINT8: to_uint8(vectors, self.calibration), OUTPUT_BINARY: to_binary(vectors),
                   OUTPUT_UBINARY: to_ubinary(vectors), TOKEN_COUNT: counts.astype(np.int32),
                   OUTPUT_UNNORMALIZED: np.ascontiguousarray(pooled[:, :options.dimensions])}
        postprocess_us = _per_text(count, (time.perf_counter() - started) * 1e6)
        outputs[TIMINGS] = np.concatenate(spent + [postprocess_us], axis=1)
        return outputs
