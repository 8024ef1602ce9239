"""Client pieces without a server: endpoint rotation, the retry policy, the batching plan, reassembly, install."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from jina_triton_client import EmbeddingError, Limits
from jina_triton_client.errors import remap_text_index
from jina_triton_client.planning import Assembler, plan_batches
from jina_triton_client.retry import Attempts, RetryPolicy, RoundRobin


class Answer(Exception):
    """A tritonclient-like failure."""

    def __init__(self, status, message):
        super().__init__(message)
        self._status, self._message = status, message

    def status(self):
        return f"StatusCode.{self._status}"

    def message(self):
        return self._message


class FakeClock:
    """`time` for the retry module: monotonic() moves only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def test_round_robin_takes_turns_and_skips_a_down_endpoint(monkeypatch):
    from jina_triton_client import retry

    clock = FakeClock()
    monkeypatch.setattr(retry, "time", clock)
    endpoints = RoundRobin(["a", "b", "c"], cooldown=0.2)
    assert [endpoints.next() for _ in range(4)] == [0, 1, 2, 0]
    endpoints.mark_down(1)
    assert endpoints.next() == 2  # turn 1 is down
    assert endpoints.next(after=0) == 2 and endpoints.next(after=2) == 0
    clock.now += 0.25  # its cool-down is over
    assert endpoints.next(after=0) == 1


def test_round_robin_tries_anyway_when_all_are_down():
    endpoints = RoundRobin(["a", "b"], cooldown=5)
    endpoints.mark_down(0)
    endpoints.mark_down(1)
    assert endpoints.next(after=0) == 1


def test_backoff_is_exponential_with_full_jitter():
    policy = RetryPolicy(retries=5, backoff=0.1, max_backoff=0.5)
    for attempt in range(6):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= min(0.5, 0.1 * 2 ** attempt)
    assert max(policy.delay(4) for _ in range(200)) > 0.25


def test_batches_are_sorted_by_length_and_bounded():
    texts = ["x" * n for n in (5, 1, 9, 3, 7)]
    assert plan_batches(texts, Limits(max_texts=2)) == [[1, 3], [0, 4], [2]]


def test_batches_are_cut_by_bytes_and_token_upper_bounds_too():
    texts = ["é" * 300, "a" * 10, "b" * 700, "c" * 1000]  # 600, 10, 700, 1000 bytes
    by_bytes = plan_batches(texts, Limits(max_bytes=1400))
    assert by_bytes == [[1, 0, 2], [3]]
    # upper bound per text: min(max_length, bytes of prefix + text + EOS) = 512 for the long ones
    assert plan_batches(texts, Limits(max_tokens=1100, max_length=512)) == [[1, 0, 2], [3]]  # 21 + 512 + 512
    assert plan_batches(texts, Limits(max_tokens=1000, max_length=512)) == [[1, 0], [2], [3]]


def test_reassembly_checks_the_rows_the_server_sent():
    import numpy as np

    assembler = Assembler(3)
    assembler.add([2, 0], np.ones((2, 4), np.float32), np.array([[5], [6]], np.int32))
    with pytest.raises(EmbeddingError, match="answered 1 rows for 2 texts"):
        assembler.add([1, 2], np.ones((1, 4), np.float32), np.array([[5]], np.int32))
    with pytest.raises(EmbeddingError, match="answered float32\\[1, 8\\]"):
        assembler.add([1], np.ones((1, 8), np.float32), np.array([[5]], np.int32))


def _attempts(**policy):
    return Attempts(RetryPolicy(backoff=0.0, **policy), RoundRobin(["a", "b"]), [4, 9], deadline=None)


def test_retries_overload_but_not_bad_requests():
    attempts = _attempts(retries=3)
    attempts.endpoint()
    assert attempts.failed(Answer("UNAVAILABLE", "Exceeds maximum queue size")) == 0.0
    attempts.endpoint()
    assert attempts.failed(Answer("CANCELLED", "CANCELLED")) == 0.0  # a draining server dropped it
    attempts.endpoint()
    with pytest.raises(EmbeddingError, match="INVALID_ARGUMENT: text\\[9\\]: is empty"):
        attempts.failed(Answer("INVALID_ARGUMENT", "text[1]: is empty"))


def test_a_request_that_crashed_a_stub_twice_is_not_retried():
    attempts = _attempts(retries=6)
    attempts.endpoint()
    attempts.failed(Answer("INTERNAL", "Stub process 'encoder_retrieval_0_0' is not healthy."))
    attempts.index = 0  # back on the same endpoint before the supervisor reloaded: the same dead stub
    attempts.failed(Answer("INTERNAL", "Stub process 'encoder_retrieval_0_0' is not healthy."))
    attempts.endpoint()
    attempts.failed(Answer("NOT_FOUND", "Request for unknown model: 'x' has no available versions"))
    attempts.endpoint()
    with pytest.raises(EmbeddingError, match="a stub died on this request twice"):
        attempts.failed(Answer("INTERNAL", "Stub process 'encoder_retrieval_0_1' is not healthy."))


def test_one_deadline_for_the_whole_call(monkeypatch):
    from jina_triton_client import retry

    clock = FakeClock()
    monkeypatch.setattr(retry, "time", clock)
    attempts = Attempts(RetryPolicy(backoff=10.0), RoundRobin(["a"]), [0], deadline=clock.now + 0.2)
    attempts.endpoint()
    assert attempts.remaining() == pytest.approx(0.2)
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):  # the pause would outlast the deadline
        for _ in range(50):
            attempts.failed(Answer("UNAVAILABLE", "busy"))
    clock.now += 0.25
    with pytest.raises(EmbeddingError, match="DEADLINE_EXCEEDED"):
        attempts.remaining()


def test_server_text_index_maps_back_to_the_callers():
    message = "in ensemble 'embed_retrieval', text[1]: is empty"
    assert remap_text_index(message, [7, 42]) == "in ensemble 'embed_retrieval', text[42]: is empty"


@pytest.mark.slow
def test_client_installs_on_its_own(tmp_path):
    import shutil

    source = shutil.copytree(REPO_ROOT / "client", tmp_path / "client")  # keep build/ out of the tree
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True, text=True).stdout.lower()
    for heavy in ("torch", "transformers", "onnxruntime", "tokenizers", "nvidia-pytriton"):
        assert heavy not in listed
    code = "from jina_triton_client import EmbeddingClient; EmbeddingClient('127.0.0.1:1'); print('ok')"
    run = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr
