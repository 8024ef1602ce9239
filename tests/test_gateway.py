"""The OpenAI/Jina gateway on the real stack (Triton + gateway, tiny replica), driven by the official
`openai` package: the same embeddings as the gRPC client, every error code, metrics, timing headers,
JSON logs, traces."""
from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import numpy as np
import openai
import pytest

from conftest import free_port, sample_texts
from jina_triton_client import EmbeddingClient

pytestmark = pytest.mark.server
KEY = "gateway-test-key"
MODEL = "jina-embeddings-v5-text-nano"
TASKS = {"retrieval.query": ("retrieval", "query"), "retrieval.passage": ("retrieval", "document"),
         "text-matching": ("text-matching", "document"), "clustering": ("clustering", "document"),
         "classification": ("classification", "document")}


class Collector(BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: keeps what it is sent."""
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        Collector.received.append((self.path, self.rfile.read(int(self.headers.get("content-length", 0)))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def collector():
    server = HTTPServer(("127.0.0.1", free_port()), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(triton, collector, tmp_path_factory):
    from jina_triton_serving.gateway.process import GatewayProcess

    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with GatewayProcess(triton, "--max-body-bytes", "200000", "--otlp-endpoint", collector,
                        "--max-length", "64", "--max-request-tokens", "4096",
                        env={"JINA_TRITON_API_KEY": f"other-key,{KEY}"}, log_file=log) as process:
        process.log = log
        yield process


@pytest.fixture(scope="module")
def api(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def grpc(triton):
    with EmbeddingClient(triton.grpc_url) as client:
        yield client


TEXTS = sample_texts()[:4]


@pytest.mark.parametrize("task", list(TASKS))
def test_openai_client_gets_the_grpc_clients_embeddings(api, grpc, task):
    adapter, input_type = TASKS[task]
    for dims in (32, 256, 768):
        for kind in ("float", "base64", "binary", "ubinary", "int8", "uint8"):
            extra = {"task": task} if kind in ("float", "base64") else {"task": task, "embedding_type": kind}
            encoding = {"encoding_format": kind} if kind in ("float", "base64") else {}
            result = api.embeddings.create(model=MODEL, input=TEXTS, dimensions=dims, extra_body=extra, **encoding)
            want, counts = grpc.embed(TEXTS, task=adapter, input_type=input_type, dimensions=dims,
                                      output="float" if kind in ("float", "base64") else kind, return_token_counts=True)
            if kind == "base64":
                got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in result.data])
            else:
                got = np.array([d.embedding for d in result.data], dtype=np.float64)
            assert [d.index for d in result.data] == list(range(len(TEXTS)))
            np.testing.assert_allclose(got, want.astype(np.float64), rtol=0, atol=1e-6 if kind in ("float", "base64") else 0)
            assert result.usage.prompt_tokens == result.usage.total_tokens == int(counts.sum())


def test_a_single_string_task_models_and_unnormalized(api, grpc):
    single = api.embeddings.create(model=f"{MODEL}-retrieval-query", input="how do I reset my router?")
    want = grpc.embed(["how do I reset my router?"], task="retrieval", input_type="query")
    np.testing.assert_allclose(single.data[0].embedding, want[0], atol=1e-6)
    raw = api.embeddings.create(model=MODEL, input=TEXTS, dimensions=64, extra_body={"normalized": False})
    want = grpc.embed(TEXTS, dimensions=64, output="unnormalized")
    np.testing.assert_allclose(np.array([d.embedding for d in raw.data]), want, rtol=1e-6, atol=1e-6)


def test_models_lists_the_tasks(api):
    names = {model.id for model in api.models.list()}
    assert {MODEL, f"{MODEL}-retrieval", f"{MODEL}-retrieval-query", f"{MODEL}-text-matching",
            f"{MODEL}-clustering", f"{MODEL}-classification"} <= names


def test_a_jina_shaped_request_works_as_documented(gateway, grpc):
    body = {"model": MODEL, "task": "retrieval.passage", "dimensions": 128, "embedding_type": "ubinary",
            "input": ["Triton serves models.", {"text": "Ein zweiter Text."}], "truncate": True}
    reply = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    want = grpc.embed(["Triton serves models.", "Ein zweiter Text."], dimensions=128, output="ubinary")
    assert [d["embedding"] for d in data] == want.tolist()


def _error(reply, status, param=None):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    if param:
        assert error["param"] == param and error["message"].startswith(param)
    return error


@pytest.mark.parametrize("body, param", [
    ({"input": [[1, 2, 3]]}, "input"), ({"input": []}, "input"), ({"input": ["ok", ""]}, "input[1]"),
    ({"input": "x", "dimensions": 16}, "dimensions"), ({"input": "x", "dimensions": "64"}, "dimensions"),
    ({"input": "x", "task": "summarization"}, "task"), ({"input": "x", "embedding_type": "int4"}, "embedding_type"),
    ({"input": "x", "normalized": False, "embedding_type": "int8"}, "normalized"),
    ({"input": "x", "truncate": "MIDDLE"}, "truncate"), ({"input": "x", "dimension": 64}, "dimension"),
    ({"input": "x" * 5000}, "input[0]"),                                  # over the server's bytes per text
    ({"input": ["short", " ".join(f"w{i}" for i in range(200))], "truncate": False}, "input[1]"),
])
def test_bad_requests_are_400_naming_the_field(gateway, body, param):
    reply = httpx.post(f"{gateway.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
    _error(reply, 400, param)


def test_keys_size_and_models_give_401_413_404(gateway, api):
    assert _error(httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "x"}), 401)["type"] == "authentication_error"
    wrong = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=MODEL, input="x")
    huge = json.dumps({"input": ["y" * 1000] * 300}).encode()
    _error(httpx.post(f"{gateway.url}/v1/embeddings", content=huge, headers={"Authorization": f"Bearer {KEY}",
                                                                              "Content-Type": "application/json"}), 413)

    def chunks():  # no Content-Length: refused while streaming, past the limit
        for _ in range(300):
            yield b"y" * 1000

    _error(httpx.post(f"{gateway.url}/v1/embeddings", content=chunks(), headers={"Authorization": f"Bearer {KEY}"}), 413)
    with pytest.raises(openai.NotFoundError):
        api.embeddings.create(model="text-embedding-3-small", input="x")
    _error(httpx.post(f"{gateway.url}/v1/embeddings", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}),
           400, "body")


def test_overload_is_429_with_retry_after(triton, tmp_path):
    from jina_triton_serving.gateway.process import GatewayProcess

    with GatewayProcess(triton, "--max-concurrency", "1", log_file=tmp_path / "gw.log") as narrow:
        body = {"input": [" ".join(f"w{i}" for i in range(60))] * 64}

        def post(_):
            reply = httpx.post(f"{narrow.url}/v1/embeddings", json=body, timeout=120)
            return reply, time.monotonic()

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(post, range(8)))
    refused = [(reply, at) for reply, at in replies if reply.status_code == 429]
    admitted = [at for reply, at in replies if reply.status_code == 200]
    assert refused and admitted
    for reply, at in refused:
        assert int(reply.headers["retry-after"]) >= 1 and at >= started
        assert _error(reply, 429)["type"] == "rate_limit_error"
    assert min(at for _, at in refused) < max(admitted)  # refused while an admitted one was still running


def test_a_backend_that_is_down_is_503(tmp_path):
    from jina_triton_serving.gateway.process import GatewayProcess

    class Nowhere:
        grpc_url = f"127.0.0.1:{free_port()}"

    with GatewayProcess(Nowhere(), log_file=tmp_path / "gw.log") as orphan:
        assert _error(httpx.post(f"{orphan.url}/v1/embeddings", json={"input": "x"}, timeout=60), 503)
        ready = httpx.get(f"{orphan.url}/ready")
        assert ready.status_code == 503 and "unreachable" in " ".join(ready.json()["problems"])
        assert httpx.get(f"{orphan.url}/health").status_code == 200


def test_metrics_timing_headers_logs_and_traces(gateway, api):
    for _ in range(3):
        reply = api.embeddings.with_raw_response.create(model=MODEL, input=TEXTS, extra_headers={"x-request-id": "rid-42"})
    parts = [float(reply.headers[f"x-{part}-time"]) for part in ("tokenization", "queue", "inference")]
    total = float(reply.headers["x-total-time"])
    assert all(part >= 0 for part in parts) and parts[2] > 0 and sum(parts) <= total
    assert reply.headers["x-request-id"] == "rid-42"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)

    assert value("jina_gateway_requests_total", task="retrieval.passage", status="200") >= 3
    assert value("jina_gateway_request_duration_seconds_count", task="retrieval.passage") >= 3
    for stage in ("tokenization", "queue", "inference"):
        assert value("jina_gateway_stage_duration_seconds_count", stage=stage) >= 3
    assert value("jina_gateway_tokens_total", task="retrieval.passage") > 0
    unauthorized = value("jina_gateway_refused_total", reason="unauthorized")
    assert httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "x"}).status_code == 401
    again = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(
        httpx.get(f"{gateway.url}/metrics").text) for s in family.samples}
    assert again[("jina_gateway_refused_total", (("reason", "unauthorized"),))] == unauthorized + 1
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line.get("request_id") == "rid-42"]
    assert ours and ours[-1]["status"] == 200 and ours[-1]["texts"] == len(TEXTS) and ours[-1]["tokens"] > 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(b"POST /v1/embeddings" in body for _, body in Collector.received):
        time.sleep(0.2)
    assert any(path == "/v1/traces" and b"POST /v1/embeddings" in body for path, body in Collector.received)


def test_ready_reflects_the_backend(gateway):
    reply = httpx.get(f"{gateway.url}/ready")
    assert reply.status_code == 200 and reply.json()["problems"] == []


def test_an_odd_request_id_and_a_long_user_cannot_break_a_response_or_the_log(gateway):
    """A request id Triton's gRPC metadata cannot carry is replaced (it was a 500); `user` is logged
    cut to 128 characters whatever its length."""
    reply = httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "x", "user": "u" * 5000}, timeout=60,
                       headers={"Authorization": f"Bearer {KEY}", "x-request-id": "caf\xe9-\xff".encode("latin-1")})
    assert reply.status_code == 200, reply.text
    replaced = reply.headers["x-request-id"]
    assert len(replaced) == 32 and replaced.isalnum()
    line = next(json.loads(line) for line in gateway.log.read_text().splitlines()
                if line.startswith("{") and f'"request_id": "{replaced}"' in line)
    assert line["status"] == 200 and line["user"].startswith("u" * 128) and len(line["user"]) <= 131
