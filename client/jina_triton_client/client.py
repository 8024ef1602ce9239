"""Synchronous gRPC client."""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .connection import Connection
from .contract import DEFAULT_INPUT_TYPE, DEFAULT_TASK, DEFAULT_TRUNCATE, MAX_DIMENSIONS, TASKS, ensemble_name
from .embed_call import Request
from .errors import EmbeddingError, Failure
from .planning import Embedded


class EmbeddingClient(Connection):
    """`embed()` over gRPC: split into admitted requests, bounded concurrency, retries, failover."""

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
            clients[index] = self._grpc.InferenceServerClient(self.endpoints.items[index], **self.channel)
        return clients[index]

    def embed(self, texts, task: str = DEFAULT_TASK, input_type: str = DEFAULT_INPUT_TYPE,
              dimensions: int = MAX_DIMENSIONS, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
              return_token_counts: bool = False):
        """Embeddings [N, d] (or [N, d/8] packed) in input order; with token counts on request."""
        result = self.embed_detailed(texts, task, input_type, dimensions, output, truncate)
        return (result.embeddings, result.token_counts) if return_token_counts else result.embeddings

    def embed_detailed(self, texts, task: str = DEFAULT_TASK, input_type: str = DEFAULT_INPUT_TYPE,
                       dimensions: int = MAX_DIMENSIONS, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
                       timings: bool = False, headers: dict | None = None) -> Embedded:
        """`embed` with token counts and, on request, the server's timings of the slowest request."""
        plan = self.plan(texts, task, input_type, dimensions, output, truncate)
        assembler = plan.assembler

        def send(indices):
            return indices, *self._send([plan.texts[i] for i in indices], indices, plan.request, plan.deadline, timings,
                                        headers)

        if len(plan.batches) <= 1 or self.max_in_flight == 1:
            for indices in plan.batches:
                assembler.add(*send(indices))
            return assembler.result()
        with ThreadPoolExecutor(self.max_in_flight) as pool:
            futures = [pool.submit(send, indices) for indices in plan.batches]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
            for future in done:
                if future.exception():
                    raise future.exception()
                assembler.add(*future.result())
        return assembler.result()

    def _send(self, texts: list[str], indices: list[int], request: Request, deadline, timings: bool,
              headers: dict | None) -> tuple:
        from tritonclient.utils import InferenceServerException

        attempts = self.attempts(indices, deadline)
        while True:
            client, arguments, started = self.attempt(attempts, texts, request, timings, headers)
            try:
                return self.answer(client.infer(**arguments), request, timings, started)
            except InferenceServerException as exc:
                try:
                    pause = attempts.failed(exc)
                except EmbeddingError as error:
                    if error.failure is Failure.NOT_FOUND:
                        raise self.not_served(error, request.task, self._served(client)) from None
                    raise
                time.sleep(pause)

    def _served(self, client) -> list[str]:
        try:
            return [task for task in TASKS if client.is_model_ready(ensemble_name(task), headers=self.headers or None)]
        except Exception:  # noqa: BLE001 - the server went away meanwhile: nothing to name
            return []

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
