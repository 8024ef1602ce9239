"""Client pieces without a server: endpoint rotation, backoff, batching plan, install."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from jina_triton_client._core import RetryPolicy, RoundRobin, plan_batches, remap_text_index


def test_round_robin_takes_turns_and_skips_a_down_endpoint():
    endpoints = RoundRobin(["a", "b", "c"], cooldown=0.2)
    assert [endpoints.next() for _ in range(4)] == [0, 1, 2, 0]
    endpoints.mark_down(1)
    assert endpoints.next() == 2  # turn 1 is down
    assert endpoints.next(after=0) == 2 and endpoints.next(after=2) == 0
    time.sleep(0.25)
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
    assert plan_batches(texts, 2) == [[1, 3], [0, 4], [2]]


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
