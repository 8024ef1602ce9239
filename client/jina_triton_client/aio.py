"""asyncio gRPC client (tritonclient.grpc.aio) with the same surface as EmbeddingClient."""
from __future__ import annotations

import asyncio

from .connection import Connection
from .errors import EmbeddingError, Failure, message_of, status_of
from .contract import DEFAULT_INPUT_TYPE, DEFAULT_TASK, DEFAULT_TRUNCATE, MAX_DIMENSIONS, TASKS, ensemble_name
from .embed_call import Request
from .planning import Embedded


class AsyncEmbeddingClient(Connection):
    def __init__(self, url="127.0.0.1:8001", **settings):
        super().__init__(url, **settings)
        import tritonclient.grpc.aio as aioclient

        self._grpc = aioclient
        self._clients: dict[int, object] = {}

    def _client(self, index: int):
        if index not in self._clients:
            self._clients[index] = self._grpc.InferenceServerClient(self.endpoints.items[index], **self.channel)
        return self._clients[index]

    async def embed(self, texts, task: str = DEFAULT_TASK, input_type: str = DEFAULT_INPUT_TYPE,
                    dimensions: int = MAX_DIMENSIONS, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
                    return_token_counts: bool = False):
        result = await self.embed_detailed(texts, task, input_type, dimensions, output, truncate)
        return (result.embeddings, result.token_counts) if return_token_counts else result.embeddings

    async def embed_detailed(self, texts, task: str = DEFAULT_TASK, input_type: str = DEFAULT_INPUT_TYPE,
                             dimensions: int = MAX_DIMENSIONS, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
                             timings: bool = False, headers: dict | None = None) -> Embedded:
        plan = self.plan(texts, task, input_type, dimensions, output, truncate)
        assembler = plan.assembler
        slots = asyncio.Semaphore(self.max_in_flight)

        async def one(indices):
            async with slots:
                rows = await self._send([plan.texts[i] for i in indices], indices, plan.request, plan.deadline,
                                        timings, headers)
                assembler.add(indices, *rows)

        tasks = [asyncio.ensure_future(one(indices)) for indices in plan.batches]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task_ in tasks:
                task_.cancel()
            raise
        return assembler.result()

    async def _send(self, texts, indices, request: Request, deadline, timings: bool, headers: dict | None) -> tuple:
        from tritonclient.utils import InferenceServerException

        attempts = self.attempts(indices, deadline)
        while True:
            client, arguments, started = self.attempt(attempts, texts, request, timings, headers)
            try:
                return self.answer(await client.infer(**arguments), request, timings, started)
            except InferenceServerException as exc:
                try:
                    pause = attempts.failed(exc)
                except EmbeddingError as error:
                    if error.failure is Failure.NOT_FOUND:
                        raise self.not_served(error, request.task, await self._served(client)) from None
                    raise
                await asyncio.sleep(pause)

    async def _served(self, client) -> list[str]:
        try:
            return [task for task in TASKS
                    if await client.is_model_ready(ensemble_name(task), headers=self.headers or None)]
        except Exception:  # noqa: BLE001 - the server went away meanwhile: nothing to name
            return []

    async def ready(self) -> bool:
        for index in range(len(self.endpoints.items)):
            try:
                if await self._client(index).is_server_ready(headers=self.headers or None):
                    return True
            except Exception:  # noqa: BLE001
                continue
        return False

    async def model_ready(self, model: str) -> bool:
        """True when the first endpoint serves `model` (a gateway sits beside one server)."""
        return await self._client(0).is_model_ready(model, headers=self.headers or None)

    async def control(self, model: str, action: str, headers: dict | None = None) -> None:
        """Load or unload a model on the first endpoint (Triton's repository API; it may need a key)."""
        from tritonclient.utils import InferenceServerException

        client = self._client(0)
        call = {"load": client.load_model, "unload": client.unload_model}[action]
        try:
            await call(model, headers={**self.headers, **(headers or {})} or None)
        except InferenceServerException as exc:
            raise EmbeddingError(status_of(exc), message_of(exc), self.endpoints.items[0]) from None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients = {}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
