"""The plain functions behind the Triton models, without a server."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import sample_texts
from jina_triton_client.validation import InvalidArgument
from jina_triton_pipeline.batching import plan_chunks, run_packed
from jina_triton_pipeline.pooling import last_token, matryoshka
from jina_triton_pipeline.quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8
from jina_triton_pipeline.tokenization import TextTokenizer

LONG = " ".join(f"token{i}" for i in range(200)) + " é 😀 终"


@pytest.fixture(scope="module")
def text_tokenizer(tiny_checkpoint_dir):
    return TextTokenizer(tiny_checkpoint_dir / "tokenizer.json", max_length=48)


@pytest.mark.parametrize("input_type", ["query", "document"])
@pytest.mark.parametrize("truncate", ["END", "START"])
def test_tokenization_equals_the_reference(text_tokenizer, reference, input_type, truncate):
    texts = sample_texts() + [LONG]
    batch = text_tokenizer(texts, input_type, truncate)
    want = reference.tokenize(texts, input_type, truncate, max_length=48)
    np.testing.assert_array_equal(batch.attention_mask, want["attention_mask"].numpy())
    np.testing.assert_array_equal(batch.input_ids, want["input_ids"].numpy())
    np.testing.assert_array_equal(batch.token_count[:, 0], want["attention_mask"].sum(1).numpy())


def test_none_rejects_the_long_text_by_index(text_tokenizer):
    with pytest.raises(InvalidArgument, match=r"text\[1\]: has \d+ tokens, more than the maximum 48"):
        text_tokenizer(["short", LONG], "document", "NONE")


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=400), st.sampled_from(["END", "START"]),
       st.sampled_from(["query", "document"]))
def test_any_text_fits_with_eos_last(text_tokenizer, text, truncate, input_type):
    batch = text_tokenizer([text], input_type, truncate)
    count = int(batch.token_count[0, 0])
    assert 1 <= count <= 48 and batch.input_ids[0, count - 1] == text_tokenizer.eos_id
    prefix = text_tokenizer.tokenizer.encode("Query:" if input_type == "query" else "Document:",
                                             add_special_tokens=False).ids
    assert list(batch.input_ids[0, :len(prefix)]) == prefix


def test_last_token_pooling_and_matryoshka():
    hidden = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    pooled = last_token(hidden, np.array([[5], [1], [3]]))
    np.testing.assert_array_equal(pooled, hidden[[0, 1, 2], [4, 0, 2]])
    out = matryoshka(pooled, 4)
    assert out.shape == (3, 4) and np.allclose(np.linalg.norm(out, axis=1), 1)
    assert np.allclose(out, pooled[:, :4] / np.linalg.norm(pooled[:, :4], axis=1, keepdims=True))
    assert not np.isnan(matryoshka(np.zeros((1, 8), np.float32), 4)).any()


def test_quantization_follows_sentence_transformers():
    rng = np.random.default_rng(1)
    pooled = rng.normal(size=(50, 64)).astype(np.float32)
    calibration = Calibration.fit(pooled)
    vectors = matryoshka(pooled[:5], 40)
    low = vectors.min(axis=0)
    starts, steps = calibration.ranges(40)
    reference = matryoshka(pooled, 40)
    np.testing.assert_allclose(starts, reference.min(axis=0))
    np.testing.assert_allclose(steps, (reference.max(axis=0) - reference.min(axis=0)) / 255, rtol=1e-6)
    assert (low >= starts - 1e-7).all()
    np.testing.assert_array_equal(to_uint8(vectors, calibration), ((vectors - starts) / steps).astype(np.uint8))
    np.testing.assert_array_equal(to_int8(vectors, calibration), ((vectors - starts) / steps - 128).astype(np.int8))
    outside = np.full((1, 40), 10.0, np.float32)
    assert to_uint8(outside, calibration).max() == 255 and to_int8(-outside, calibration).min() == -128


@given(st.integers(min_value=1, max_value=100))
def test_binary_packing(dims):
    vector = np.random.default_rng(dims).normal(size=(2, dims)).astype(np.float32)
    ubinary = to_ubinary(vector)
    assert ubinary.shape == (2, -(-dims // 8)) and ubinary.dtype == np.uint8
    np.testing.assert_array_equal(np.unpackbits(ubinary, axis=1)[:, :dims], vector > 0)
    assert not np.unpackbits(ubinary, axis=1)[:, dims:].any()  # the last byte is zero-padded
    np.testing.assert_array_equal(to_binary(vector).astype(np.int16), ubinary.astype(np.int16) - 128)


def test_calibration_round_trips(tmp_path):
    calibration = Calibration.fit(np.random.default_rng(2).normal(size=(10, 48)).astype(np.float32))
    calibration.save(tmp_path / "c.npz")
    loaded = Calibration.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(loaded.minimum, calibration.minimum)


@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40),
       st.integers(min_value=300, max_value=2000))
def test_chunks_cover_every_row_within_budget(lengths, budget):
    lengths = np.array(lengths)
    chunks = plan_chunks(lengths, budget)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= budget
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= 1.10 * lengths[chunk].sum() + 1e-9


def test_packed_run_equals_separate_runs():
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(50, 6)).astype(np.float32)

    def forward(ids, mask):  # position-independent toy encoder, zero where masked
        return weights[ids] * mask[..., None]

    requests = []
    for n, t in ((2, 7), (1, 3), (4, 12)):
        mask = np.zeros((n, t), np.int64)
        for row in range(n):
            mask[row, :rng.integers(1, t + 1)] = 1
        requests.append((rng.integers(0, 50, size=(n, t)) * mask, mask))
    calls = []
    outputs = run_packed(requests, 16, lambda ids, mask: calls.append(ids.size) or forward(ids, mask))
    for (ids, mask), out in zip(requests, outputs):
        assert out.shape == (*ids.shape, 6)
        np.testing.assert_allclose(out, forward(ids, mask))
    assert max(calls) <= 16 or len(calls) > 1
