"""asyncio gRPC client (tritonclient.grpc.aio) with the same surface as EmbeddingClient."""
from __future__ import annotations

import asyncio

import numpy as np

from ._core import Assembler, Request, Settings, check_request, plan_batches
from .contract import DEFAULT_INPUT_TYPE, DEFAULT_TRUNCATE, TOKEN_COUNT


class AsyncEmbeddingClient(Settings):
    def __init__(self, url="127.0.0.1:8001", **settings):
        super().__init__(url, **settings)
        import tritonclient.grpc.aio as aioclient

        self._grpc = aioclient
        self._clients: dict[int, object] = {}

    def _client(self, index: int):
        if index not in self._clients:
            self._clients[index] = self._grpc.InferenceServerClient(self.endpoints.items[index], **self.tls)
        return self._clients[index]

    async def embed(self, texts, task: str = "retrieval", input_type: str = DEFAULT_INPUT_TYPE,
                    dimensions: int = 768, output: str = "float", truncate: str = DEFAULT_TRUNCATE,
                    return_token_counts: bool = False):
        texts, request = check_request(texts, task, input_type, dimensions, output, truncate)
        assembler = Assembler(len(texts))
        slots = asyncio.Semaphore(self.max_in_flight)

        async def one(indices):
            async with slots:
                assembler.add(indices, *await self._send([texts[i] for i in indices], indices, request))

        tasks = [asyncio.ensure_future(one(ix)) for ix in plan_batches(texts, self.batch_size)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task_ in tasks:
                task_.cancel()
            raise
        return assembler.result(return_token_counts)

    async def _send(self, texts, indices, request: Request) -> tuple[np.ndarray, np.ndarray]:
        from tritonclient.utils import InferenceServerException

        failure, index = None, None
        for attempt in range(self.retry.retries + 1):
            index = self.endpoints.next(after=index)
            try:
                result = await self._client(index).infer(**self._call_arguments(self._grpc, texts, request))
                return result.as_numpy(request.tensor), result.as_numpy(TOKEN_COUNT)
            except InferenceServerException as exc:
                failure = self._failure(exc, index, indices)
            if attempt < self.retry.retries:
                await asyncio.sleep(self.retry.delay(attempt))
        raise failure

    async def ready(self) -> bool:
        for index in range(len(self.endpoints.items)):
            try:
                if await self._client(index).is_server_ready(headers=self.headers or None):
                    return True
            except Exception:  # noqa: BLE001
                continue
        return False

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients = {}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
