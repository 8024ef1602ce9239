"""The gateway's ASGI app: the embeddings API over the ensembles, through the project's async client.

It holds what Triton's own endpoints lack: bearer API keys, TLS (uvicorn's), a body-size
limit checked before the body is read, bounded concurrency answered with 429 and
Retry-After, OpenAI-shaped errors with the right codes, metrics, timing headers, JSON
logs with a request id that reaches Triton, traces.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jina_triton_client import AsyncEmbeddingClient, EmbeddingError, InvalidArgument, Limits, RetryPolicy
from jina_triton_client.contract import CONTRACT_VERSION, REQUEST_ID_HEADER, TASKS, ensemble_name

from ..triton_process import GRPC_ADMIN_KEY_HEADER
from . import api, openapi
from .telemetry import Metrics, Tracing, json_logger

try:
    import orjson

    def dumps(value) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover
    def dumps(value) -> bytes:
        return json.dumps(value).encode()

READY_CACHE_S = 1.0


@dataclass
class Config:
    triton: str = "127.0.0.1:8001"           # Triton's gRPC endpoint (loopback: the gateway is the front)
    api_keys: tuple = ()                      # bearer keys; none: open
    admin_key: str | None = None              # for /admin/models/...; none: the admin routes are off
    triton_lock_key: str | None = None        # Triton's admin lock of this start (from `jina-triton serve`)
    max_body_bytes: int = 16 << 20
    max_inputs: int = 2048
    max_concurrency: int = 64                 # embedding calls in flight (reading, parsing, waiting); more get 429
    body_timeout: float = 30.0                # seconds to receive a body; slower gets 408
    retry_after: int = 1
    timeout: float = 120.0
    status_file: Path | None = None           # written by `jina-triton serve`: Triton up, models down
    tasks: tuple = TASKS                      # the tasks Triton serves: /v1/models lists these, others get 404
    otlp_endpoint: str | None = None
    limits: Limits = field(default_factory=Limits)


def _error(error: api.ApiError, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if error.retry_after is not None:
        headers["retry-after"] = str(int(error.retry_after))
    if error.status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(dumps(error.body()), error.status, headers, media_type="application/json")


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.metrics = Metrics()
        self.log = json_logger()
        self.tracing = Tracing(config.otlp_endpoint)
        self.client: AsyncEmbeddingClient | None = None
        self.in_flight = 0
        self.started = int(time.time())
        self._ready: tuple | None = None
        self._ready_lock = asyncio.Lock()
        self._openapi: bytes | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def startup(self) -> None:
        retry = RetryPolicy(retries=2, backoff=0.05, max_backoff=0.5)  # refuse fast rather than wait long
        self.client = AsyncEmbeddingClient(self.config.triton, timeout=self.config.timeout, retry=retry,
                                           limits=self.config.limits)

    async def shutdown(self) -> None:
        if self.client:
            await self.client.close()
        self.tracing.shutdown()

    # -- checks ------------------------------------------------------------------
    def _authorized(self, request: Request, keys) -> bool:
        if not keys:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 before reading when its declared size is over the limit, and
        with 408 when it does not arrive within the body timeout."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            self.metrics.refused.labels("body_too_large").inc()
            raise api.ApiError(413, f"body: larger than the limit of {limit} bytes", "body")

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    self.metrics.refused.labels("body_too_large").inc()
                    raise api.ApiError(413, f"body: larger than the limit of {limit} bytes", "body")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.config.body_timeout)
        except asyncio.TimeoutError:
            self.metrics.refused.labels("body_timeout").inc()
            raise api.ApiError(408, f"body: not received within {self.config.body_timeout:g} s", "body") from None

    @contextlib.contextmanager
    def _slot(self):
        """Admission before any work: a request over the concurrency limit is refused at once."""
        if self.in_flight >= self.config.max_concurrency:
            self.metrics.refused.labels("overloaded").inc()
            raise api.ApiError(429, f"the gateway is at its limit of {self.config.max_concurrency} concurrent "
                               f"requests; retry after the time in Retry-After", None, "rate_limit_error",
                               self.config.retry_after)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    # -- routes --------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = api.request_id(request.headers.get(REQUEST_ID_HEADER))
        task, status, fields = "-", 500, {}
        try:
            if not self._authorized(request, self.config.api_keys):
                self.metrics.refused.labels("unauthorized").inc()
                raise api.unauthorized("API key")
            with self._slot():
                call = api.parse(api.load_json(await self._body(request), self.config.max_inputs),
                                 self.config.max_inputs, self.config.tasks)
                task = call.task
                result = await self._until_disconnected(request, self._embed(call, request_id, dict(request.headers)))
                if result is None:  # the caller left: nothing to answer, Triton's work was cancelled
                    status, fields = 499, {"error": "the client disconnected"}
                    return Response(b"", 499)
                payload = dumps(api.answer(call, result.embeddings, result.token_counts))
            status = 200
            headers = self._timing_headers(result.timings_ms, started, request_id)
            tokens = int(result.token_counts.sum())
            self.metrics.tokens.labels(task).inc(tokens)
            self.metrics.texts.labels(task).inc(len(call.texts))
            fields = {"texts": len(call.texts), "tokens": tokens, "dimensions": call.dimensions,
                      "embedding_type": call.embedding_type, "user": api.loggable(call.user)}
            return Response(payload, 200, headers, media_type="application/json")
        except api.ApiError as error:
            status = error.status
            fields = {"error": error.message}
            return _error(error, request_id)
        except Exception:  # noqa: BLE001 - the detail goes to the log, never to the caller
            incident = uuid.uuid4().hex[:12]
            self.log.exception("unexpected failure", extra={"fields": {"request_id": request_id, "incident": incident}})
            return _error(api.ApiError(500, f"internal error, id {incident} (see the gateway log)", None,
                                       "server_error"), request_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(task, str(status)).inc()
            self.metrics.latency.labels(task).observe(elapsed)
            self.log.info("embeddings", extra={"fields": {"request_id": request_id, "status": status, "task": task,
                                                          "ms": round(elapsed * 1000, 2), **fields}})

    @staticmethod
    async def _until_disconnected(request: Request, work):
        """`work`'s result, or None once the client has gone: then the work (its gRPC calls to
        Triton, which drops their queued steps) is cancelled instead of finished for nobody."""
        async def gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        job, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
            if job.done():
                return job.result()
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            return None
        finally:
            for future in (job, watch):
                future.cancel()

    async def _embed(self, call: api.EmbedCall, request_id: str, headers: dict):
        try:
            with self.tracing.span("POST /v1/embeddings", headers, {"jina.task": call.task,
                                                                     "jina.texts": len(call.texts),
                                                                     "jina.request_id": request_id}):
                forwarded = {REQUEST_ID_HEADER: request_id, **self.tracing.inject()}
                return await self.client.embed_detailed(call.texts, task=call.adapter, input_type=call.input_type,
                                                        dimensions=call.dimensions, output=call.output,
                                                        truncate=call.truncate, timings=True, headers=forwarded)
        except InvalidArgument as exc:
            raise api.invalid(exc.field.replace("text", "input", 1), exc.rule) from None
        except EmbeddingError as exc:
            raise api.server_error(exc, self.config.retry_after) from None

    def _timing_headers(self, timings: dict, started: float, request_id: str) -> dict:
        """TEI's headers, in milliseconds: the slowest Triton request's parts; queue is the rest of
        its round trip (queues, transport, the ensemble's hand-offs), so the parts never exceed the total."""
        tokenize = timings.get("tokenize", 0.0)
        inference = timings.get("encode", 0.0) + timings.get("postprocess", 0.0)
        queue = max(0.0, timings.get("request", 0.0) - tokenize - inference)
        total = (time.perf_counter() - started) * 1000
        for stage, value in (("tokenization", tokenize), ("queue", queue), ("inference", inference)):
            self.metrics.stages.labels(stage).observe(value / 1000)
        return {"x-request-id": request_id, "x-total-time": f"{total:.3f}", "x-tokenization-time": f"{tokenize:.3f}",
                "x-queue-time": f"{queue:.3f}", "x-inference-time": f"{inference:.3f}"}

    async def models(self, request: Request) -> Response:
        if not self._authorized(request, self.config.api_keys):
            return _error(api.unauthorized("API key"), "-")
        return Response(dumps(api.models_list(self.started, self.config.tasks)), media_type="application/json")

    async def health(self, request: Request) -> Response:
        return Response(dumps({"status": "ok"}), media_type="application/json")

    async def ready(self, request: Request) -> Response:
        """Ready only when Triton and every ensemble are, and no model lost its stub. The answer is
        kept READY_CACHE_S: probes and callers hitting it often cost Triton one check a second."""
        async with self._ready_lock:
            cached = self._ready
            if cached is None or time.monotonic() - cached[0] > READY_CACHE_S:
                problems = await self._problems()
                cached = self._ready = (time.monotonic(), dumps({"status": "not ready" if problems else "ready",
                                                                 "problems": problems}), 503 if problems else 200)
        return Response(cached[1], cached[2], media_type="application/json")

    async def _problems(self) -> list[str]:
        problems = []
        if self.config.status_file and self.config.status_file.is_file():
            state = json.loads(self.config.status_file.read_text())
            if state.get("triton") != "up":
                problems.append(f"tritonserver is {state.get('triton')}")
            problems += [f"{model} is down (a dead stub, or it failed to load)" for model in state.get("down", [])]
        try:
            if not await self.client.ready():
                problems.append("tritonserver is not ready")
            for task in self.config.tasks:
                if not await self.client.model_ready(ensemble_name(task)):
                    problems.append(f"{ensemble_name(task)} is not ready")
        except Exception:  # noqa: BLE001 - unreachable: not ready
            problems.append("tritonserver is unreachable")
        return problems

    async def openapi_document(self, request: Request) -> Response:
        """The API this server answers, from the definitions parse() enforces (no key: it describes,
        it changes nothing)."""
        if self._openapi is None:
            self._openapi = dumps(openapi.document(self.config.max_inputs, self.config.tasks, str(CONTRACT_VERSION)))
        return Response(self._openapi, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        """The docs page and its assets, from the package: nothing loads from the internet."""
        asset = request.path_params.get("asset", "index.html")
        if asset not in openapi.DOC_ASSETS:
            return _error(api.ApiError(404, f"no document {asset!r} here", None, "not_found_error"), "-")
        return Response((openapi.DOCS / asset).read_bytes(), media_type=openapi.DOC_ASSETS[asset],
                        headers={"content-security-policy": "default-src 'self'"})

    async def metrics_page(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def admin(self, request: Request) -> Response:
        """POST /admin/models/{model}/{load|unload}: explicit model control behind the admin key."""
        if not self.config.admin_key or not self._authorized(request, (self.config.admin_key,)):
            return _error(api.unauthorized("admin key"), "-")
        model, action = request.path_params["model"], request.path_params["action"]
        if action not in ("load", "unload"):
            return _error(api.ApiError(404, "action: must be load or unload", "action", "not_found_error"), "-")
        lock = self.config.triton_lock_key
        try:
            await self.client.control(model, action, {GRPC_ADMIN_KEY_HEADER: lock} if lock else None)
        except EmbeddingError as exc:  # Triton's message names the model and the problem
            return _error(api.ApiError(400, f"{action} {model}: {exc.message}", "model"), "-")
        return Response(dumps({"model": model, action: "done"}), media_type="application/json")


def create_app(config: Config) -> Starlette:
    gateway = Gateway(config)
    routes = [Route("/v1/embeddings", gateway.embeddings, methods=["POST"]),
              Route("/embeddings", gateway.embeddings, methods=["POST"]),
              Route("/v1/models", gateway.models, methods=["GET"]),
              Route("/health", gateway.health, methods=["GET"]),
              Route("/ready", gateway.ready, methods=["GET"]),
              Route("/metrics", gateway.metrics_page, methods=["GET"]),
              Route("/openapi.json", gateway.openapi_document, methods=["GET"]),
              Route("/docs", gateway.docs, methods=["GET"]),
              Route("/docs/{asset:str}", gateway.docs, methods=["GET"]),
              Route("/admin/models/{model}/{action:str}", gateway.admin, methods=["POST"])]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app
