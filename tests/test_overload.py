"""No single request can hurt the server (tiny replica, the default per-request limits, texts of up to
2,048 tokens): the heavy request of the bug report is refused before any encoder work, a heavy request
within the limits does not stall short ones on the same task or another, and the client splits what
the server would refuse. Order and overlap are proven by events and counters, never by a stopwatch."""
from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import serve_test_repository
from jina_triton_client import EmbeddingClient, Limits
from jina_triton_client.contract import DEFAULT_MAX_REQUEST_TOKENS

pytestmark = [pytest.mark.server, pytest.mark.slow]
MAX_LENGTH = 2048
LIMITS = {"max_length": MAX_LENGTH, "max_text_bytes": 128 * 1024, "max_request_bytes": 4 << 20,
          "max_request_tokens": DEFAULT_MAX_REQUEST_TOKENS, "token_budget": 8192}
HEAVY_BOUND_S = 240     # the client's timeout for a heavy request (a hang fails the test, slowness does not)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    yield from serve_test_repository(tmp_path_factory, "overload", tiny_checkpoint, engine_cache, reference, **LIMITS)


def _infer(server, texts, model="embed_retrieval", timeout=None):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("embeddings")],
                        client_timeout=timeout).as_numpy("embeddings")


def _tokens(server, kind: str) -> float:
    """The encoders' token counter (computed or real), from Triton's metrics."""
    from jina_triton_tools.bench import token_totals

    with urllib.request.urlopen(server.metrics_url, timeout=30) as reply:
        return token_totals(reply.read().decode())[kind]


def _successes(server, model: str) -> int:
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        model, headers=server.security.grpc_admin_headers(), as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def _until(predicate, what: str, seconds: float = HEAVY_BOUND_S) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_the_reported_request_is_refused_before_any_encoder_work_and_the_server_stays_up(server):
    """64 texts of 60,000 bytes: within every byte limit, 131,072 tokens after truncation."""
    texts = ["lorem ipsum " * 5000] * 64
    before = _tokens(server, "real")
    with pytest.raises(InferenceServerException) as error:
        _infer(server, texts, timeout=HEAVY_BOUND_S)
    assert str(error.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert f"more than {DEFAULT_MAX_REQUEST_TOKENS} tokens after truncation" in error.value.message()
    assert _tokens(server, "real") == before  # refused in preprocess: no encoder ran a token of it
    assert server.ready() and _infer(server, ["still fine"]).shape == (1, 768)


def test_a_heavy_request_does_not_stall_short_ones(server):
    heavy = ["lorem ipsum dolor sit amet " * 400] * (DEFAULT_MAX_REQUEST_TOKENS // MAX_LENGTH)  # at the cap
    done = threading.Event()
    outcome = {}
    tokenized = _successes(server, "preprocess")

    def send_heavy():
        outcome["vectors"] = _infer(server, heavy, timeout=HEAVY_BOUND_S)
        done.set()

    thread = threading.Thread(target=send_heavy)
    thread.start()
    _until(lambda: _successes(server, "preprocess") > tokenized, "the heavy request was tokenized")
    for model in ("embed_retrieval", "embed_clustering"):  # while the heavy one is on an encoder
        assert _infer(server, ["hi"], model=model, timeout=HEAVY_BOUND_S).shape == (1, 768)
    assert not done.is_set(), "the short requests waited for the heavy one"
    thread.join(HEAVY_BOUND_S)
    assert outcome["vectors"].shape == (len(heavy), 768)
    assert server.ready()


def test_the_client_splits_by_tokens_what_one_request_could_not_carry(server):
    texts = [f"{i} " + "lorem ipsum " * 700 for i in range(24)]  # ~1,400 tokens each
    with pytest.raises(InferenceServerException, match="tokens after truncation"):
        _infer(server, texts, timeout=HEAVY_BOUND_S)  # 49,152 tokens: over the cap as one request
    limits = Limits(max_length=MAX_LENGTH, max_tokens=DEFAULT_MAX_REQUEST_TOKENS)
    requests = _successes(server, "embed_retrieval")
    with EmbeddingClient(server.grpc_url, limits=limits, timeout=HEAVY_BOUND_S) as client:
        vectors, counts = client.embed(texts, return_token_counts=True)
    assert vectors.shape == (24, 768) and (counts > 1000).all() and counts.sum() > DEFAULT_MAX_REQUEST_TOKENS
    assert _successes(server, "embed_retrieval") - requests >= 2  # cut into requests under the cap, each admitted
