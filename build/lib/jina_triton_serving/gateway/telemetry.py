"""What operators see of the gateway: Prometheus metrics, one JSON log line per request,
OpenTelemetry traces when an endpoint is configured."""
from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.requests = Counter("jina_gateway_requests_total", "Embedding requests by task and HTTP status",
                                ["task", "status"], **labels)
        self.latency = Histogram("jina_gateway_request_duration_seconds", "Time to answer an embedding request",
                                 ["task"], buckets=LATENCY_BUCKETS, **labels)
        self.stages = Histogram("jina_gateway_stage_duration_seconds",
                                "Per-request time by stage (tokenization, queue, inference), from the server's timings",
                                ["stage"], buckets=LATENCY_BUCKETS, **labels)
        self.tokens = Counter("jina_gateway_tokens_total", "Tokens embedded (prefix and EOS included)", ["task"],
                              **labels)
        self.texts = Counter("jina_gateway_texts_total", "Texts embedded", ["task"], **labels)
        self.in_flight = Gauge("jina_gateway_in_flight", "Embedding requests being answered", **labels)
        self.refused = Counter("jina_gateway_refused_total", "Requests refused before reaching Triton, by reason",
                               ["reason"], **labels)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def json_logger(name: str = "jina_triton.gateway") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class Tracing:
    """OTLP/HTTP traces when an endpoint is given; otherwise every call is a no-op."""

    def __init__(self, endpoint: str | None, service: str = "jina-triton-gateway"):
        self.tracer = None
        if not endpoint:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint),
                                                            schedule_delay_millis=200))
        self.tracer = self.provider.get_tracer("jina_triton.gateway")

    def span(self, name: str, headers: dict, attributes: dict):
        """A server span continuing the caller's traceparent (if any)."""
        if self.tracer is None:
            return _NoSpan()
        from opentelemetry.propagate import extract

        return self.tracer.start_as_current_span(name, context=extract(headers), attributes=attributes)

    def inject(self) -> dict:
        """The current span's traceparent, for the call to Triton."""
        if self.tracer is None:
            return {}
        from opentelemetry.propagate import inject

        carrier: dict = {}
        inject(carrier)
        return carrier

    def shutdown(self) -> None:
        if self.tracer is not None:
            self.provider.shutdown()


class _NoSpan:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_attribute(self, *args):
        pass
