"""What the sync and async clients share: argument checks, batching plan, retries."""
from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from .contract import (
    API_KEY_HEADER, GRPC_HEADER_PREFIX, DEFAULT_INPUT_TYPE, DEFAULT_MAX_BATCH_SIZE, DEFAULT_TRUNCATE, OUTPUTS, PACKED_OUTPUTS,
    PARAM_DIMENSIONS, PARAM_INPUT_TYPE, PARAM_TRUNCATE, TASKS, TEXT, TOKEN_COUNT, ensemble_name)
from .validation import InvalidArgument, Options, check_dimensions, check_input_type, check_truncate

RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")
# Errors that pass while the server reloads a model whose Python stub died
TRANSIENT = (("INTERNAL", "is not healthy"), ("NOT_FOUND", "has no available versions"))


class EmbeddingError(RuntimeError):
    """The server refused or failed a request (after retries, where retrying made sense)."""

    def __init__(self, status: str, message: str, endpoint: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (endpoint {endpoint})" if endpoint else ""))
        self.status = status
        self.message = message
        self.endpoint = endpoint


@dataclass(frozen=True)
class Request:
    task: str
    options: Options
    output: str
    model: str
    tensor: str

    @property
    def parameters(self) -> dict:
        return {PARAM_INPUT_TYPE: self.options.input_type, PARAM_DIMENSIONS: self.options.dimensions,
                PARAM_TRUNCATE: self.options.truncate}


def check_request(texts, task: str, input_type: str = DEFAULT_INPUT_TYPE, dimensions: int = 768,
                  output: str = "float", truncate: str = DEFAULT_TRUNCATE) -> tuple[list[str], Request]:
    """The server's rules, applied before anything is sent."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise InvalidArgument(TEXT, "must be a list of strings")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidArgument(f"{TEXT}[{index}]", "must be a UTF-8 string")
        if not text:
            raise InvalidArgument(f"{TEXT}[{index}]", "is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"{TEXT}[{index}]", "is not valid UTF-8") from None
    if task not in TASKS:
        raise InvalidArgument("task", f"must be one of {', '.join(repr(t) for t in TASKS)}")
    if output not in OUTPUTS:
        raise InvalidArgument("output", f"must be one of {', '.join(repr(o) for o in OUTPUTS)}")
    options = Options(check_input_type(input_type), check_dimensions(dimensions), check_truncate(truncate))
    if output in PACKED_OUTPUTS and options.dimensions % 8:
        raise InvalidArgument(PARAM_DIMENSIONS, f"must be divisible by 8 for the packed output "
                              f"{output!r}, got {options.dimensions}")
    return texts, Request(task, options, output, ensemble_name(task), OUTPUTS[output])


def plan_batches(texts: list[str], batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> list[list[int]]:
    """Indices per request: sorted by length so each request pads little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def text_tensor(module, texts: list[str]):
    data = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
    tensor = module.InferInput(TEXT, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def requested_outputs(module, request: Request) -> list:
    return [module.InferRequestedOutput(request.tensor), module.InferRequestedOutput(TOKEN_COUNT)]


class Assembler:
    """Puts each batch's rows back at their input positions."""

    def __init__(self, size: int):
        self.size = size
        self.embeddings = None
        self.token_counts = np.zeros(size, np.int32)

    def add(self, indices: list[int], embeddings: np.ndarray, token_counts: np.ndarray) -> None:
        if self.embeddings is None:
            self.embeddings = np.empty((self.size, embeddings.shape[1]), embeddings.dtype)
        self.embeddings[indices] = embeddings
        self.token_counts[indices] = token_counts.reshape(-1)

    def result(self, return_token_counts: bool):
        if self.embeddings is None:  # no texts at all
            self.embeddings = np.empty((0, 0), np.float32)
        return (self.embeddings, self.token_counts) if return_token_counts else self.embeddings


def status_of(exc: Exception) -> str:
    """'UNAVAILABLE' etc. from a tritonclient exception."""
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    return str(status or "UNKNOWN").replace("StatusCode.", "")


def message_of(exc: Exception) -> str:
    return exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)


@dataclass
class RetryPolicy:
    retries: int = 6           # attempts after the first
    backoff: float = 0.2       # seconds, doubled each retry
    max_backoff: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_backoff, backoff * 2**attempt)]."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))


class RoundRobin:
    """Endpoints in turn; one that answered UNAVAILABLE sits out a cool-down."""

    def __init__(self, items: list[str], cooldown: float = 2.0):
        if not items:
            raise InvalidArgument("url", "at least one endpoint is required")
        self.items = list(items)
        self.cooldown = cooldown
        self._down_until = [0.0] * len(self.items)
        self._turn = 0
        self._lock = threading.Lock()

    def next(self, after: int | None = None) -> int:
        """The next healthy endpoint: in turn, or the one after `after` on a retry."""
        with self._lock:
            if after is None:
                start, self._turn = self._turn, self._turn + 1
            else:
                start = after + 1
            now = time.monotonic()
            for step in range(len(self.items)):
                index = (start + step) % len(self.items)
                if self._down_until[index] <= now:
                    return index
            return start % len(self.items)  # all cooling down: try anyway

    def mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + self.cooldown


def endpoint_list(url) -> list[str]:
    if isinstance(url, str):
        return [part.strip() for part in url.split(",") if part.strip()]
    return list(url)


def remap_text_index(message: str, indices: list[int]) -> str:
    """The server names text[i] of one request; the caller wants its own index."""
    return re.sub(r"text\[(\d+)\]", lambda m: f"text[{indices[int(m.group(1))]}]"
                  if int(m.group(1)) < len(indices) else m.group(0), message)


class Settings:
    """Connection settings shared by the sync and async clients."""

    def __init__(self, url="127.0.0.1:8001", *, timeout: float | None = 60.0,
                 retry: RetryPolicy | None = None, max_in_flight: int = 4,
                 batch_size: int = DEFAULT_MAX_BATCH_SIZE, ssl: bool = False,
                 root_certificates: str | None = None, private_key: str | None = None,
                 certificate_chain: str | None = None, headers: dict | None = None,
                 api_key: str | None = None):
        self.endpoints = RoundRobin(endpoint_list(url))
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_in_flight = max(1, max_in_flight)
        self.batch_size = batch_size
        self.tls = {"ssl": ssl or bool(root_certificates), "root_certificates": root_certificates,
                    "private_key": private_key, "certificate_chain": certificate_chain}
        self.headers = dict(headers or {})
        if api_key:  # Triton checks restricted gRPC protocols under a prefixed header
            self.headers[GRPC_HEADER_PREFIX + API_KEY_HEADER] = api_key

    def _call_arguments(self, module, texts: list[str], request: Request) -> dict:
        return {"model_name": request.model, "inputs": [text_tensor(module, texts)],
                "outputs": requested_outputs(module, request), "parameters": request.parameters,
                "headers": self.headers or None, "client_timeout": self.timeout}

    def _failure(self, exc: Exception, index: int, indices: list[int]) -> "EmbeddingError":
        """The error to keep for a retry; raised at once when retrying cannot help."""
        failure = EmbeddingError(status_of(exc), remap_text_index(message_of(exc), indices),
                                 self.endpoints.items[index])
        transient = any(failure.status == status and text in failure.message for status, text in TRANSIENT)
        if (failure.status not in RETRYABLE and not transient) or "is restricted" in failure.message:
            raise failure from None  # a missing key stays missing however often we ask
        if failure.status == "UNAVAILABLE":
            self.endpoints.mark_down(index)
        return failure
