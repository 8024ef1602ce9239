"""Backpressure on the real server (tiny replica, one encoder instance, queues of one request): a
full queue answers UNAVAILABLE at once; a request that waits past its timeout answers UNAVAILABLE
and costs the encoder not one token; the default queue timeout is 60 s. Order comes from Triton's
statistics (a request tokenized is on its way to the encoder), never from a stopwatch."""
from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from conftest import serve_test_repository

pytestmark = [pytest.mark.server, pytest.mark.slow]
LIMITS = {"max_length": 2048, "max_text_bytes": 128 * 1024, "max_request_bytes": 4 << 20, "max_request_tokens": 32768,
          "token_budget": 8192, "encoder_instances": 1, "max_queue_size": 1}
HEAVY = ["lorem ipsum dolor sit amet " * 400] * 16   # 16 x 2,048 tokens: seconds on one encoder instance
PATIENCE = 240                                       # a hang fails a test; slowness does not


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    yield from serve_test_repository(tmp_path_factory, "pressure", tiny_checkpoint, engine_cache, reference, **LIMITS)


def _infer(server, texts, timeout_us=None):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("embeddings", "token_count")]
    extra = {"timeout": timeout_us} if timeout_us else {}
    return client.infer("embed_retrieval", [tensor], outputs=outputs, client_timeout=PATIENCE, **extra)


def _tokenized(server) -> int:
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
        "preprocess", headers=server.security.grpc_admin_headers(), as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def _until_tokenized(server, count: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while _tokenized(server) < count:
        assert time.monotonic() < deadline, "the heavy request was never tokenized"
        time.sleep(0.02)


def _in_background(server, texts) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_infer(server, texts)))
    thread.start()
    return thread, outcome


def _real_tokens(server) -> float:
    from jina_triton_tools.bench import token_totals

    with urllib.request.urlopen(server.metrics_url, timeout=30) as reply:
        return token_totals(reply.read().decode(), "encoder_retrieval")["real"]


def test_a_full_queue_answers_unavailable_at_once(server):
    start = _tokenized(server)
    running, first = _in_background(server, HEAVY)
    _until_tokenized(server, start + 1)          # on the encoder's only instance
    queued, second = _in_background(server, HEAVY)
    _until_tokenized(server, start + 2)          # in the encoder's queue of one
    with pytest.raises(InferenceServerException) as refused:
        _infer(server, ["one more"])
    assert str(refused.value.status()) == "StatusCode.UNAVAILABLE"
    assert "Exceeds maximum queue size" in refused.value.message()
    assert running.is_alive(), "the heavy request was done before the queue could be full"
    for thread in (running, queued):
        thread.join(PATIENCE)
    assert first["result"].as_numpy("embeddings").shape == second["result"].as_numpy("embeddings").shape == (16, 768)


def test_a_request_past_its_queue_timeout_is_refused_and_costs_the_encoder_nothing(server):
    before = _real_tokens(server)
    start = _tokenized(server)
    running, heavy = _in_background(server, HEAVY)
    _until_tokenized(server, start + 1)
    with pytest.raises(InferenceServerException) as refused:
        _infer(server, ["waits behind the heavy one"], timeout_us=200_000)  # Triton's per-request timeout
    assert str(refused.value.status()) == "StatusCode.UNAVAILABLE"
    assert "Request timeout expired" in refused.value.message()
    assert running.is_alive(), "the heavy request was done before the short one could wait behind it"
    running.join(PATIENCE)
    spent = int(heavy["result"].as_numpy("token_count").sum())
    assert _real_tokens(server) - before == spent  # the heavy request's tokens, and not one of the refused one's


def test_every_queue_waits_60_seconds_by_default_and_takes_a_shorter_client_timeout(tiny_repository):
    for model in ("preprocess", "encoder_retrieval", "postprocess"):
        config = text_format.Parse((tiny_repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        policy = config.dynamic_batching.default_queue_policy
        assert policy.default_timeout_microseconds == 60_000_000 and policy.allow_timeout_override, model
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
