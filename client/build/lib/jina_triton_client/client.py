"""Synchronous gRPC client."""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import numpy as np

from ._core import Assembler, Request, Settings, check_request, plan_batches
from .contract import DEFAULT_INPUT_TYPE, DEFAULT_TRUNCATE, TOKEN_COUNT


class EmbeddingClient(Settings):
    """`embed()` over gRPC with batching, bounded concurrency, retries and failover.

    url: "host:port", "h1:p1,h2:p2" or a list; requests go round-robin and a
    retryable failure (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) moves
    to the next endpoint after an exponential backoff with full jitter.
    """

    def __init__(self, url="127.0.0.1:8001", **settings):
        super().__init__(url, **settings)
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self._local = threading.local()

    def _client(self, index: int):
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if index not in clients:
            clients[index] = self._grpc.InferenceServerClient(self.endpoints.items[index], **self.tls)
        return clients[index]

    def embed(self, texts, task: str = "retrieval", input_type: str = DEFAULT_INPUT_TYPE,
              dimensions: int = 768, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
              return_token_counts: bool = False):
        """Embeddings [N, d] (or [N, d/8] packed) in input order; with token counts on request."""
        texts, request = check_request(texts, task, input_type, dimensions, output, truncate)
        assembler = Assembler(len(texts))
        batches = plan_batches(texts, self.batch_size)
        if len(batches) <= 1 or self.max_in_flight == 1:
            for indices in batches:
                assembler.add(indices, *self._send([texts[i] for i in indices], indices, request))
            return assembler.result(return_token_counts)
        with ThreadPoolExecutor(self.max_in_flight) as pool:
            futures = {pool.submit(self._send, [texts[i] for i in ix], ix, request): ix for ix in batches}
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception():
                    raise future.exception()
                assembler.add(futures[future], *future.result())
        return assembler.result(return_token_counts)

    def _send(self, texts: list[str], indices: list[int], request: Request) -> tuple[np.ndarray, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        failure, index = None, None
        for attempt in range(self.retry.retries + 1):
            index = self.endpoints.next(after=index)
            try:
                result = self._client(index).infer(**self._call_arguments(self._grpc, texts, request))
                return result.as_numpy(request.tensor), result.as_numpy(TOKEN_COUNT)
            except InferenceServerException as exc:
                failure = self._failure(exc, index, indices)
            if attempt < self.retry.retries:
                time.sleep(self.retry.delay(attempt))
        raise failure

    def ready(self) -> bool:
        """True when at least one endpoint is live and ready."""
        for index in range(len(self.endpoints.items)):
            try:
                if self._client(index).is_server_ready(headers=self.headers or None):
                    return True
            except Exception:  # noqa: BLE001 - an unreachable endpoint is simply not ready
                continue
        return False

    def close(self) -> None:
        for client in getattr(self._local, "clients", {}).values():
            client.close()
        self._local.clients = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
