"""The plain functions behind the Triton models, without a server."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import sample_texts
from jina_triton_client.validation import InvalidArgument
from jina_triton_pipeline.heap import IdleRelease
from jina_triton_pipeline.packing import PASS_TOKENS, plan_chunks, run_packed
from jina_triton_pipeline.pooling import last_token, matryoshka
from jina_triton_pipeline.quantization import Calibration, to_binary, to_int8, to_ubinary, to_uint8
from jina_triton_pipeline.tokenization import TextTokenizer

LONG = " ".join(f"token{i}" for i in range(200)) + " é 😀 终"


def _long_multilingual() -> list[str]:
    """Long texts in several scripts, far over the test max length: truncation meets the real vocabulary."""
    from jina_triton_build.corpus import corpus_entries

    by_lang: dict[str, list[str]] = {}
    for lang, sentence in corpus_entries():
        by_lang.setdefault(lang, []).append(sentence)
    return [" ".join(by_lang[lang][:12]) for lang in ("de", "zh", "ar", "ru", "ja") if lang in by_lang]


@pytest.fixture(scope="module")
def text_tokenizer(tiny_checkpoint_dir):
    return TextTokenizer(tiny_checkpoint_dir / "tokenizer.json", max_length=48)


@pytest.fixture(scope="module")
def real_tokenizer_file(tiny_checkpoint_dir):
    return tiny_checkpoint_dir / "tokenizer.json"  # the tiny checkpoint has the real vocabulary


@pytest.fixture(scope="module")
def real_tokenizer(real_tokenizer_file):
    return TextTokenizer(real_tokenizer_file, 64)


# pieces that stress a window's cut: digit runs group by three, whitespace looks ahead, contractions
PIECES = st.sampled_from(["1234567", "9", " ", "   ", "\n", "\r\n", "\t", "'s", "'ll", "don't", "...", "?!",
                          "Wörter", "日本語のテキスト", "😀🚀", "e\u0301", "word", " word", "ab12cd", "-- ", "٣٤٥"])
TEXTS = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400),
                  st.lists(PIECES, min_size=1, max_size=250).map("".join))


@pytest.mark.parametrize("input_type", ["query", "document"])
@pytest.mark.parametrize("truncate", ["END", "START"])
def test_tokenization_equals_the_reference(text_tokenizer, reference, input_type, truncate):
    texts = sample_texts() + [LONG] + _long_multilingual()
    assert len(texts) >= 12
    batch = text_tokenizer(texts, input_type, truncate)
    want = reference.tokenize(texts, input_type, truncate, max_length=48)
    np.testing.assert_array_equal(batch.attention_mask, want["attention_mask"].numpy())
    np.testing.assert_array_equal(batch.input_ids, want["input_ids"].numpy())
    np.testing.assert_array_equal(batch.token_count[:, 0], want["attention_mask"].sum(1).numpy())


def test_none_rejects_the_long_text_by_index(text_tokenizer):
    with pytest.raises(InvalidArgument, match=r"text\[1\]: has more than 48 tokens, the maximum"):
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
    assert not np.isnan(matryoshka(np.zeros((1, 8), np.float32), 4)).any()  # postprocess refuses zeros first


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
        padded, real = len(chunk) * lengths[chunk].max(), lengths[chunk].sum()
        assert len(chunk) == 1 or padded - real <= max(0.10 * real + 1e-9, PASS_TOKENS)
    for chunk in plan_chunks(lengths, budget, pass_tokens=0):  # without the allowance: the bound alone
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= 1.10 * lengths[chunk].sum() + 1e-9


def test_short_texts_share_a_pass_when_their_padding_costs_less_than_one():
    """A 9- and a 20-token query: 11 padded tokens cost less than another pass, though over 10 %."""
    assert [c.tolist() for c in plan_chunks(np.array([20, 9]), 512)] == [[1, 0]]
    assert [c.tolist() for c in plan_chunks(np.array([20, 9]), 512, pass_tokens=0)] == [[1], [0]]
    # a long one does not take a short one in: its padding is both over 10 % and over a pass's cost
    assert [c.tolist() for c in plan_chunks(np.array([9, 200]), 512)] == [[0], [1]]
    # long texts within 10 % of each other still share one, up to the budget
    assert [c.tolist() for c in plan_chunks(np.array([200, 190, 185]), 600)] == [[2, 1, 0]]
    assert [c.tolist() for c in plan_chunks(np.array([200, 190, 185]), 599)] == [[2, 1], [0]]


def _toy_requests(rng):
    requests = []
    for n, t in ((2, 7), (1, 3), (4, 12)):
        mask = np.zeros((n, t), np.int64)
        for row in range(n):
            mask[row, :rng.integers(1, t + 1)] = 1
        requests.append((rng.integers(1, 50, size=(n, t)) * mask, mask))
    return requests


def _toy_forward(weights):
    def forward(ids, mask):  # a toy pooled encoder: the sum of the row's embeddings, padding ignored
        return (weights[ids] * mask[..., None]).sum(axis=1)
    return forward


def test_packed_run_equals_separate_runs():
    rng = np.random.default_rng(4)
    forward = _toy_forward(rng.normal(size=(50, 6)).astype(np.float32))
    requests = _toy_requests(rng)
    calls = []
    packed = run_packed(requests, 16, lambda ids, mask: calls.append(ids.shape) or forward(ids, mask))
    for (ids, mask), out, spent in zip(requests, packed.pooled, packed.encode_us):
        assert out.shape == (ids.shape[0], 6) and spent >= 0
        np.testing.assert_allclose(out, forward(ids, mask), rtol=1e-6)
    assert len(calls) == packed.passes > 1 and all(rows * length <= 16 or rows == 1 for rows, length in calls)
    assert packed.real_tokens == sum(int(mask.sum()) for _, mask in requests) <= packed.computed_tokens


def test_a_request_turned_down_between_passes_costs_no_more_compute():
    rng = np.random.default_rng(5)
    forward = _toy_forward(rng.normal(size=(50, 6)).astype(np.float32))
    requests = _toy_requests(rng)
    seen = []

    def counting(ids, mask):
        seen.append(ids.shape[0])
        return forward(ids, mask)

    packed = run_packed(requests, 8, counting, keep=lambda index: index != 2)
    assert packed.pooled[2] is None and packed.pooled[0] is not None and packed.pooled[1] is not None
    assert sum(seen) == sum(ids.shape[0] for ids, _ in requests[:2])


@settings(max_examples=int(os.environ.get("JINA_TRITON_PROPERTY_CASES", 1500)), deadline=None)
@given(TEXTS, st.sampled_from(["END", "START"]), st.sampled_from(["query", "document"]),
       st.integers(min_value=8, max_value=80))
def test_windowed_truncation_equals_tokenizing_in_full(real_tokenizer, text, truncate, input_type, max_length):
    """A long text is tokenized through a window: the kept tokens are exactly those of the full tokenization."""
    import copy

    tokenizer = copy.copy(real_tokenizer)
    tokenizer.max_length = max_length
    prefix = {"query": "Query: ", "document": "Document: "}[input_type]
    full = tokenizer.tokenizer.encode(prefix + text, add_special_tokens=False)
    budget = max_length - 1
    want = full.ids
    if len(want) > budget and truncate == "END":
        want = want[:budget]
    elif len(want) > budget:
        n_prefix = sum(1 for _, end in full.offsets if end <= len(prefix))
        want = want[:n_prefix] + want[len(want) - (budget - n_prefix):]
    assert tokenizer.token_ids([text], input_type, truncate)[0] == want + [tokenizer.eos_id]


class CountingTokenizer:
    """A `tokenizers.Tokenizer` that counts the characters it is asked to tokenize."""

    def __init__(self, inner):
        self.inner, self.characters = inner, 0

    def encode(self, text, **kwargs):
        self.characters += len(text)
        return self.inner.encode(text, **kwargs)

    def encode_batch(self, texts, **kwargs):
        self.characters += sum(len(text) for text in texts)
        return self.inner.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_huge_text_costs_only_the_tokens_it_keeps(real_tokenizer):
    import copy

    tokenizer = copy.copy(real_tokenizer)
    tokenizer.max_length = 512
    huge = "lorem ipsum " * 100_000  # 1.2 MB, ~200k tokens in full
    for truncate in ("END", "START"):
        tokenizer.tokenizer = CountingTokenizer(real_tokenizer.tokenizer)
        assert len(tokenizer.token_ids([huge], "document", truncate)[0]) == 512
        assert tokenizer.tokenizer.characters < 40 * 512, (truncate, tokenizer.tokenizer.characters)  # not 1.2M


def test_torch_rows_pack_as_the_numpy_rows_do_including_a_request_dropped_midway():
    """The cuda target's row source (gathered on the device, one copy back) against the numpy one."""
    import torch

    from jina_triton_pipeline.torch_engine import TorchPasses

    rng = np.random.default_rng(6)
    weights = rng.normal(size=(50, 6)).astype(np.float32)
    forward = _toy_forward(weights)
    requests = _toy_requests(rng)
    want = run_packed(requests, 8, forward, keep=lambda index: index != 2)
    table = torch.from_numpy(weights)
    calls = []

    def torch_forward(ids, mask):
        calls.append(tuple(ids.shape))
        return (table[ids] * mask[..., None]).sum(dim=1)

    turned = iter([True, False])  # request 2 (4 rows) is computed in one pass, then turned down
    got = run_packed([(torch.from_numpy(i), torch.from_numpy(m)) for i, m in requests], 8, torch_forward,
                     passes=TorchPasses(torch.device("cpu")), keep=lambda index: index != 2 or next(turned, False))
    assert got.pooled[2] is None and want.pooled[2] is None
    for index in (0, 1):
        np.testing.assert_allclose(got.pooled[index].numpy(), want.pooled[index], rtol=1e-6)
    assert got.passes == len(calls) and all(rows * length <= 8 or rows == 1 for rows, length in calls)
    computed_rows = sum(rows for rows, _ in calls)
    assert sum(len(ids) for ids, _ in requests[:2]) < computed_rows < sum(len(ids) for ids, _ in requests)


def test_rope_frequencies_stay_fp32_in_half_precision():
    """Rounded to fp16 they shift the phase by up to ~1e-3 x the position: far off at 8K tokens."""
    import torch

    from jina_triton_pipeline.eurobert import EuroBert

    config = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 128,
              "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 1e6}
    model = EuroBert(config)
    want = model.inv_freq.clone()
    model.placed("cpu", torch.float16)
    assert model.embed_tokens.weight.dtype == torch.float16 and model.inv_freq.dtype == torch.float32
    torch.testing.assert_close(model.inv_freq, want, rtol=0, atol=0)
    assert (want.half().float() - want).abs().max() > 0  # what a cast would have lost


HEAP_PROBE = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from jina_triton_pipeline.heap import release_free_memory

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
chunks = [libc.malloc(64 << 10) for _ in range(2000)]  # 125 MB below the mmap threshold: the heap
for chunk in chunks:
    ctypes.memset(chunk, 1, 64 << 10)
for chunk in chunks[:-1]:  # the last one stays: the heap's top is in use, nothing trims itself
    libc.free(chunk)
before = anon_mb()
assert release_free_memory()
print(before, anon_mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, /proc")
def test_freed_heap_goes_back_to_the_system():
    """What a tokenizer's parse or an engine's passes free is returned, not kept resident for good
    (in a fresh process: this one's heap is whatever the tests before left)."""
    import jina_triton_pipeline

    root = str(Path(jina_triton_pipeline.__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, root], capture_output=True, text=True, check=True)
    before, after = (int(x) for x in out.stdout.split())
    assert before - after > 100, (before, after)


def test_the_heap_is_returned_only_once_idle_after_an_execute_that_grew_it():
    released = threading.Event()
    heap = IdleRelease(idle_s=0.05, release=released.set)
    with heap.running():
        heap.grew()
        assert not released.wait(0.3)  # never while an execute runs, however long
    assert released.wait(10)
    released.clear()
    with heap.running():
        heap.grew()
    with heap.running():  # the next execute came within the idle time
        assert not released.wait(0.3)
    assert released.wait(10)
    released.clear()
    with heap.running():
        pass  # an execute that grew nothing
    assert not released.wait(0.3)
    patient = IdleRelease(idle_s=60, release=released.set)
    with patient.running():
        patient.grew()
    assert not released.wait(0.3)  # not before the idle time has passed
