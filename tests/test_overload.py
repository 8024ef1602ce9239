"""No single request can hurt the server (tiny replica, the default per-request limits, texts of up to
2,048 tokens): the heavy request of the bug report is refused at once, a heavy request within the
limits does not stall short ones on the same task or another, and the client splits what the server
would refuse."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import build_test_repository
from jina_triton_client import EmbeddingClient, Limits
from jina_triton_client.contract import DEFAULT_MAX_REQUEST_TOKENS

pytestmark = [pytest.mark.server, pytest.mark.slow]
MAX_LENGTH = 2048
LIMITS = {"max_length": MAX_LENGTH, "max_text_bytes": 128 * 1024, "max_request_bytes": 4 << 20,
          "max_request_tokens": DEFAULT_MAX_REQUEST_TOKENS, "token_budget": 8192}
HEAVY_BOUND_S = 240     # an admitted heavy request answers within this, on this 2-core machine
SHORT_BOUND_S = 2.0     # a 2-character request beside it


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    from jina_triton_serving.server import TritonServer

    repository = build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("overload") / "repo", engine_cache,
                                       reference, **LIMITS)
    with TritonServer.on_free_ports(repository, log_file=repository.parent / "server.log") as triton:
        yield triton


def _infer(server, texts, model="embed_retrieval", timeout=None):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("embeddings")],
                        client_timeout=timeout).as_numpy("embeddings")


def test_the_reported_request_is_refused_at_once_and_the_server_stays_up(server):
    """64 texts of 60,000 bytes: within every byte limit, 131,072 tokens after truncation."""
    texts = ["lorem ipsum " * 5000] * 64
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as error:
        _infer(server, texts, timeout=60)
    elapsed = time.monotonic() - started
    assert str(error.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert f"more than {DEFAULT_MAX_REQUEST_TOKENS} tokens after truncation" in error.value.message()
    assert elapsed < 10, elapsed
    assert server.ready() and _infer(server, ["still fine"]).shape == (1, 768)


def test_a_heavy_request_does_not_stall_short_ones(server):
    heavy = ["lorem ipsum dolor sit amet " * 400] * (DEFAULT_MAX_REQUEST_TOKENS // MAX_LENGTH)  # at the cap
    outcome = {}

    def send_heavy():
        started = time.monotonic()
        outcome["vectors"] = _infer(server, heavy, timeout=HEAVY_BOUND_S)
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=send_heavy)
    thread.start()
    time.sleep(3.0)  # tokenized and on an encoder instance by now
    assert thread.is_alive(), "the heavy request finished too soon to prove anything"
    for model in ("embed_retrieval", "embed_clustering"):
        started = time.monotonic()
        assert _infer(server, ["hi"], model=model, timeout=30).shape == (1, 768)
        assert time.monotonic() - started < SHORT_BOUND_S, (model, time.monotonic() - started)
    assert thread.is_alive(), "the short requests did not run beside the heavy one"
    thread.join(HEAVY_BOUND_S)
    assert outcome["vectors"].shape == (len(heavy), 768) and outcome["seconds"] < HEAVY_BOUND_S
    assert server.ready()


def test_the_client_splits_by_tokens_what_one_request_could_not_carry(server):
    texts = [f"{i} " + "lorem ipsum " * 250 for i in range(24)]  # 3,000 bytes: up to 2,048 tokens each, say the bytes
    limits = Limits(max_length=MAX_LENGTH, max_tokens=DEFAULT_MAX_REQUEST_TOKENS)
    with EmbeddingClient(server.grpc_url, limits=limits, timeout=HEAVY_BOUND_S) as client:
        vectors, counts = client.embed(texts, return_token_counts=True)
    assert vectors.shape == (24, 768) and (counts > 400).all()
