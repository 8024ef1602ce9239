"""Locust users for the Triton embedding server: gRPC through the project's client, HTTP on KServe v2.

Configured by the runner (loadtest/run.py) through the environment:
  JINA_LOADTEST_SCENARIO   scenario name or TOML path
  JINA_LOADTEST_GRPC       gRPC HOST:PORT (comma-separated for failover)
  JINA_LOADTEST_HTTP       http://HOST:PORT
  JINA_LOADTEST_TOKENIZER  tokenizer.json used to build the texts
  JINA_LOADTEST_EVENTS     JSON-lines file: one line per request (time, outcome, texts, tokens)
Every request ends in exactly one event, success or failure: nothing is lost silently.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # tritonclient.grpc under gevent: before any channel exists

from locust import FastHttpUser, User, constant, events, task  # noqa: E402

from jina_triton_client import EmbeddingClient, RetryPolicy  # noqa: E402
from jina_triton_client.contract import OUTPUTS, TOKEN_COUNT, ensemble_name  # noqa: E402
from scenario import TextPool, load_scenario  # noqa: E402

SCENARIO = load_scenario(os.environ.get("JINA_LOADTEST_SCENARIO", "query_heavy"))
POOL = TextPool(os.environ["JINA_LOADTEST_TOKENIZER"])
_events_lock = threading.Lock()
_started = 0  # requests begun; every one must end in exactly one event
_events_file = open(os.environ["JINA_LOADTEST_EVENTS"], "a") if os.environ.get("JINA_LOADTEST_EVENTS") else None


def begin() -> float:
    global _started
    with _events_lock:
        _started += 1
    return time.perf_counter()


def write_event(protocol, kind, started, texts, tokens, error=None) -> float:
    """One JSON line per finished request; returns the elapsed milliseconds."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    if _events_file:
        line = {"t": time.time(), "protocol": protocol, "kind": kind.name, "ms": round(elapsed_ms, 2),
                "ok": error is None, "texts": texts, "tokens": tokens,
                "error": None if error is None else str(error)[:300]}
        with _events_lock:
            _events_file.write(json.dumps(line) + "\n")
            _events_file.flush()
    return elapsed_ms


class GrpcUser(User):
    """Closed loop over gRPC with the project's client (retries and failover included)."""
    wait_time = constant(0)

    def on_start(self):
        self.rng = random.Random(id(self))
        retry = RetryPolicy(retries=12, backoff=0.5, max_backoff=5.0)  # rides out a ~10 s server restart
        self.client = EmbeddingClient(os.environ["JINA_LOADTEST_GRPC"], retry=retry, timeout=300)

    @task
    def embed(self):
        kind = SCENARIO.pick(self.rng)
        texts = POOL.sample(self.rng, kind.profile, kind.texts)
        started, tokens, error = begin(), 0, None
        try:
            _, counts = self.client.embed([t.text for t in texts], task=kind.task, input_type=kind.input_type,
                                          dimensions=kind.dimensions, output=kind.output, return_token_counts=True)
            tokens = int(counts.sum())
        except Exception as exc:  # noqa: BLE001 - every failure is reported, never dropped
            error = exc
        elapsed_ms = write_event("grpc", kind, started, len(texts), tokens, error)
        self.environment.events.request.fire(request_type="grpc", name=kind.name, response_time=elapsed_ms,
                                             response_length=tokens, exception=error, context={})


class HttpUser(FastHttpUser):
    """Closed loop on Triton's KServe v2 HTTP endpoint (JSON in, binary-free JSON out)."""
    wait_time = constant(0)
    host = os.environ.get("JINA_LOADTEST_HTTP", "http://127.0.0.1:8000")

    def on_start(self):
        self.rng = random.Random(id(self))

    @task
    def embed(self):
        kind = SCENARIO.pick(self.rng)
        texts = POOL.sample(self.rng, kind.profile, kind.texts)
        body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES",
                            "data": [t.text for t in texts]}],
                "parameters": {"input_type": kind.input_type, "dimensions": kind.dimensions},
                "outputs": [{"name": OUTPUTS[kind.output]}, {"name": TOKEN_COUNT}]}
        started, tokens, error = begin(), 0, None
        with self.client.post(f"/v2/models/{ensemble_name(kind.task)}/infer", json=body,
                              catch_response=True, name=kind.name) as response:
            if response.status_code == 200:
                outputs = {o["name"]: o for o in response.json()["outputs"]}
                tokens = int(sum(outputs[TOKEN_COUNT]["data"]))
                response.success()
            else:
                error = f"HTTP {response.status_code}: {(response.text or '')[:200]}"
                response.failure(error)
        write_event("http", kind, started, len(texts), tokens, error)


@events.quitting.add_listener
def _close(environment, **_kwargs):
    if _events_file:
        with _events_lock:
            _events_file.write(json.dumps({"started": _started}) + "\n")
            _events_file.close()
