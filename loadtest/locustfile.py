"""Locust users for the embedding server, run as locust users expect:

    locust -f loadtest/locustfile.py GatewayUser --host http://HOST:8080         # the OpenAI/Jina gateway
    locust -f loadtest/locustfile.py TritonHttpUser --host http://HOST:8000      # Triton's KServe v2 HTTP
    locust -f loadtest/locustfile.py TritonGrpcUser --host grpc://HOST:8001      # gRPC, the project's client
    locust -f loadtest/locustfile.py,loadtest/shapes.py GatewayUser --host ... --sweep-users 1,4,16 --step-seconds 30
    locust -f loadtest/locustfile.py OpenLoopGatewayUser --host ... --arrival-rate 20 -u 1    # open loop

Options on locust's own command line (all optional):
  --scenario NAME|FILE   the request mix (loadtest/scenarios/*.toml; default query_heavy)
  --texts-file FILE      texts to send, one per line (default: built from the shipped multilingual corpus)
  --arrival-rate R       OpenLoopGatewayUser: requests per second over all users, Poisson arrivals, sent
                         whether or not earlier ones were answered (latency under overload, measured honestly)
  --api-key KEY          the gateway's key (default $JINA_TRITON_API_KEY)
  --events FILE          one JSON line per finished request; every begun request ends in exactly one
  --grpc-url, --http-url, --gateway-url   each user class's own host, to run several classes at once
                         (--host, when given, is every class's host)
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # tritonclient.grpc under gevent: before any channel exists

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
from locust import FastHttpUser, User, constant, events, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenario import TextPool, load_scenario  # noqa: E402

from jina_triton_client.contract import MODEL_NAME, OUTPUTS, TOKEN_COUNT, ensemble_name  # noqa: E402

JINA_TASK = {("retrieval", "query"): "retrieval.query", ("retrieval", "document"): "retrieval.passage"}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--scenario", default="query_heavy",
                        help="request mix: a name in loadtest/scenarios or a TOML file")
    parser.add_argument("--texts-file", default="", help="texts to send, one per line (default: the shipped corpus)")
    parser.add_argument("--arrival-rate", type=float, default=10.0, help="OpenLoopGatewayUser: requests/s in all")
    parser.add_argument("--api-key", default=os.environ.get("JINA_TRITON_API_KEY", ""), help="the gateway's key")
    parser.add_argument("--events", default="", help="JSON-lines file: one line per finished request")
    parser.add_argument("--grpc-url", default="", help="TritonGrpcUser's host, grpc://HOST:PORT")
    parser.add_argument("--http-url", default="", help="TritonHttpUser's host, http://HOST:PORT")
    parser.add_argument("--gateway-url", default="", help="the gateway users' host, http(s)://HOST:PORT")


class Run:
    """What every user of this process shares: the scenario, the texts, the event log."""

    def __init__(self, options):
        self.scenario = load_scenario(options.scenario)
        self.pool = TextPool(options.texts_file or None)
        self.lock = threading.Lock()
        self.begun = 0
        self.events = open(options.events, "a") if options.events else None

    def begin(self) -> float:
        with self.lock:
            self.begun += 1
        return time.perf_counter()

    def end(self, protocol, kind, started, texts, tokens, error=None, status=None) -> float:
        """One JSON line per finished request; returns the elapsed milliseconds."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        if self.events:
            line = {"t": time.time(), "protocol": protocol, "kind": kind.name, "ms": round(elapsed_ms, 2),
                    "ok": error is None, "status": status, "texts": texts, "tokens": tokens,
                    "error": None if error is None else str(error)[:300]}
            with self.lock:
                self.events.write(json.dumps(line) + "\n")
                self.events.flush()
        return elapsed_ms

    def close(self):
        if self.events:
            with self.lock:
                self.events.write(json.dumps({"started": self.begun}) + "\n")
                self.events.close()


RUN: Run | None = None


@events.init.add_listener
def _init(environment, **_kwargs):
    global RUN
    options = environment.parsed_options
    RUN = Run(options)
    for user_class, url in ((TritonGrpcUser, options.grpc_url), (TritonHttpUser, options.http_url),
                            (GatewayUser, options.gateway_url), (OpenLoopGatewayUser, options.gateway_url)):
        if url:
            user_class.host = url


@events.quitting.add_listener
def _close(environment, **_kwargs):
    if RUN:
        RUN.close()


def _fire(user, protocol, kind, elapsed_ms, tokens, error):
    user.environment.events.request.fire(request_type=protocol, name=kind.name, response_time=elapsed_ms,
                                         response_length=tokens, exception=error, context={})


class TritonGrpcUser(User):
    """Closed loop over gRPC with the project's client (retries and failover included)."""
    wait_time = constant(0)
    host = "grpc://127.0.0.1:8001"

    def on_start(self):
        from jina_triton_client import EmbeddingClient, RetryPolicy

        self.rng = random.Random(id(self))
        retry = RetryPolicy(retries=20, backoff=0.5, max_backoff=3.0)  # rides out a ~40 s server restart
        self.client = EmbeddingClient(self.host.removeprefix("grpc://"), retry=retry, timeout=300)

    def on_stop(self):
        self.client.close()  # a gRPC channel left open under gevent can hang the interpreter's exit

    @task
    def embed(self):
        kind = RUN.scenario.pick(self.rng)
        texts = RUN.pool.sample(self.rng, kind.profile, kind.texts)
        started, tokens, error = RUN.begin(), 0, None
        try:
            _, counts = self.client.embed(texts, task=kind.task, input_type=kind.input_type,
                                          dimensions=kind.dimensions, output=kind.output, return_token_counts=True)
            tokens = int(counts.sum())
        except Exception as exc:  # noqa: BLE001 - every failure is reported, never dropped
            error = exc
        _fire(self, "grpc", kind, RUN.end("grpc", kind, started, len(texts), tokens, error), tokens, error)


class TritonHttpUser(FastHttpUser):
    """Closed loop on Triton's KServe v2 HTTP endpoint (JSON in, JSON out)."""
    wait_time = constant(0)
    host = "http://127.0.0.1:8000"

    def on_start(self):
        self.rng = random.Random(id(self))

    @task
    def embed(self):
        kind = RUN.scenario.pick(self.rng)
        texts = RUN.pool.sample(self.rng, kind.profile, kind.texts)
        body = {"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}],
                "parameters": {"input_type": kind.input_type, "dimensions": kind.dimensions},
                "outputs": [{"name": OUTPUTS[kind.output]}, {"name": TOKEN_COUNT}]}
        started, tokens, error = RUN.begin(), 0, None
        with self.client.post(f"/v2/models/{ensemble_name(kind.task)}/infer", json=body,
                              catch_response=True, name=kind.name) as response:
            if response.status_code == 200:
                outputs = {o["name"]: o for o in response.json()["outputs"]}
                tokens = int(sum(outputs[TOKEN_COUNT]["data"]))
                response.success()
            else:
                error = f"HTTP {response.status_code}: {(response.text or '')[:200]}"
                response.failure(error)
            RUN.end("http", kind, started, len(texts), tokens, error, response.status_code)


class GatewayUser(FastHttpUser):
    """Closed loop on the gateway's OpenAI-compatible /v1/embeddings (Jina fields for the task)."""
    wait_time = constant(0)
    host = "http://127.0.0.1:8080"
    concurrency = 64  # connections one user may hold: the open-loop user sends without waiting

    def on_start(self):
        self.rng = random.Random(id(self))
        key = self.environment.parsed_options.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def embed_once(self):
        kind = RUN.scenario.pick(self.rng)
        texts = RUN.pool.sample(self.rng, kind.profile, kind.texts)
        body = {"model": MODEL_NAME, "input": texts, "dimensions": kind.dimensions, "embedding_type": kind.output
                if kind.output != "float" else "base64",
                "task": JINA_TASK.get((kind.task, kind.input_type), kind.task)}
        started, tokens, error = RUN.begin(), 0, None
        with self.client.post("/v1/embeddings", json=body, headers=self.headers, catch_response=True,
                              name=kind.name) as response:
            if response.status_code == 200:
                tokens = int(response.json()["usage"]["total_tokens"])
                response.success()
            else:
                error = f"HTTP {response.status_code}: {(response.text or '')[:200]}"
                response.failure(error)
            RUN.end("gateway", kind, started, len(texts), tokens, error, response.status_code)

    @task
    def embed(self):
        self.embed_once()


class OpenLoopGatewayUser(GatewayUser):
    """Open loop: Poisson arrivals at --arrival-rate requests/s over all users of this class,
    each request sent whether or not the earlier ones were answered."""

    def on_start(self):
        super().on_start()
        self.pending = gevent.pool.Group()
        self.next_arrival = time.perf_counter()

    def on_stop(self):
        self.pending.join(timeout=110)  # requests already sent end in an event before locust stops

    @task
    def embed(self):
        users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
        rate = self.environment.parsed_options.arrival_rate / users
        self.pending.spawn(self.embed_once)
        # arrivals on an absolute schedule: a late wake-up is caught up, the rate holds on average
        self.next_arrival += self.rng.expovariate(rate)
        gevent.sleep(max(0.0, self.next_arrival - time.perf_counter()))
