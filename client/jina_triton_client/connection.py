"""What the sync and async clients share: endpoints, TLS, headers, limits, the call's tensors."""
from __future__ import annotations

import time

import numpy as np

from dataclasses import dataclass

from .contract import TEXT, TIMINGS, TOKEN_COUNT
from .errors import EmbeddingError
from .embed_call import Request, check_request
from .planning import Assembler, Limits, plan_batches
from .retry import Attempts, RetryPolicy, RoundRobin, endpoint_list

_UNLIMITED = 2**31 - 1
# gRPC's own reconnect backoff grows to 120 s: a client that saw a server restart would keep
# failing fast with "connection refused" long after the server is back. Cap it at one second.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _UNLIMITED), ("grpc.max_receive_message_length", _UNLIMITED),
    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Plan:
    texts: list[str]
    request: Request
    assembler: Assembler
    batches: list[list[int]]   # the text indices of each request
    deadline: float | None


class Connection:
    """Connection settings of both clients.

    url: "host:port", "h1:p1,h2:p2" or a list; requests go round-robin and a retryable
    failure moves to the next endpoint. timeout: seconds for a whole `embed` call,
    retries included (None: no deadline). limits: the server's per-request limits, so
    that every request the client cuts is admitted.
    """

    def __init__(self, url="127.0.0.1:8001", *, timeout: float | None = 60.0,
                 retry: RetryPolicy | None = None, max_in_flight: int = 4, limits: Limits | None = None,
                 ssl: bool = False, root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, headers: dict | None = None):
        self.endpoints = RoundRobin(endpoint_list(url))
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max(1, max_in_flight)
        self.limits = limits or Limits()
        self.channel = {"ssl": ssl or bool(root_certificates), "root_certificates": root_certificates,
                        "private_key": private_key, "certificate_chain": certificate_chain,
                        "channel_args": CHANNEL_ARGS}
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}

    def deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def plan(self, texts, task, input_type, dimensions, output, truncate) -> "Plan":
        """What both clients do before sending: check the call, cut it into admitted requests."""
        texts, request = check_request(texts, task, input_type, dimensions, output, truncate)
        return Plan(texts, request, Assembler(len(texts)), plan_batches(texts, self.limits, request.options.input_type),
                    self.deadline())

    def attempts(self, indices: list[int], deadline: float | None) -> Attempts:
        return Attempts(self.retry, self.endpoints, indices, deadline)

    def attempt(self, attempts: Attempts, texts: list[str], request: Request, timings: bool,
                headers: dict | None) -> tuple:
        """The next attempt of one request: (its endpoint's client, infer() arguments, its start)."""
        index = attempts.endpoint()
        arguments = self.call_arguments(self._grpc, texts, request, attempts.remaining(), timings, headers)
        return self._client(index), arguments, time.perf_counter()

    @staticmethod
    def not_served(error: EmbeddingError, task: str, served: list[str]) -> EmbeddingError:
        """Triton's NOT_FOUND for a task's ensemble, said as what it means, with what is served."""
        return EmbeddingError("NOT_FOUND", f"task {task!r} is not served by this server; it serves "
                                           f"{', '.join(served) or 'no task right now'} ({error.cause})",
                              error.endpoint)

    def answer(self, result, request: Request, timings: bool, started: float) -> tuple:
        """An answered request's rows, token counts, timings and round trip (ms)."""
        return (*self.rows(result, request, timings), (time.perf_counter() - started) * 1000)

    def call_arguments(self, module, texts: list[str], request: Request, seconds_left: float | None,
                       timings: bool, headers: dict | None = None) -> dict:
        data = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
        tensor = module.InferInput(TEXT, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data)
        names = [request.tensor, TOKEN_COUNT] + ([TIMINGS] if timings else [])
        arguments = {"model_name": request.model, "inputs": [tensor],
                     "outputs": [module.InferRequestedOutput(name) for name in names],
                     "parameters": request.parameters, "headers": {**self.headers, **(headers or {})} or None,
                     "client_timeout": seconds_left}
        if seconds_left is not None:  # queues on the server drop the request once nobody waits for it
            arguments["timeout"] = max(1, int(seconds_left * 1e6))
        return arguments

    @staticmethod
    def rows(result, request: Request, timings: bool) -> tuple:
        return (result.as_numpy(request.tensor), result.as_numpy(TOKEN_COUNT),
                result.as_numpy(TIMINGS) if timings else None)
