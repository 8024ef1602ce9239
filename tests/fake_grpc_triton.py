"""A stand-in for Triton's gRPC endpoint that records what reaches it: for the clients' and the
gateway's own behaviour (how often /ready asks, whether a call is cancelled when its client leaves,
which headers a call carries), which the real server cannot show. Inference never answers (a call
stays open until it is cancelled), or, with `refuse_inference`, is refused at once."""
from __future__ import annotations

import threading
from concurrent import futures

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import free_port


class Recorder(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, refuse_inference: bool = False):
        self.calls: list[str] = []
        self.metadata: list[dict] = []       # each inference call's headers
        self.refuse_inference = refuse_inference
        self.infer_started = threading.Event()
        self.infer_cancelled = threading.Event()

    def ServerReady(self, request, context):  # noqa: N802 - the service's names
        self.calls.append("ServerReady")
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        self.calls.append(f"ModelReady {request.name}")
        return service_pb2.ModelReadyResponse(ready=True)

    def ModelInfer(self, request, context):  # noqa: N802
        self.calls.append(f"ModelInfer {request.model_name}")
        self.metadata.append(dict(context.invocation_metadata()))
        if self.refuse_inference:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text: refused by the stand-in")
        self.infer_started.set()
        while context.is_active():
            threading.Event().wait(0.05)
        self.infer_cancelled.set()
        context.abort(grpc.StatusCode.CANCELLED, "cancelled")


class FakeTriton:
    """`with FakeTriton() as fake:` then point a gateway at `fake.grpc_url`."""

    def __init__(self, refuse_inference: bool = False):
        self.recorder = Recorder(refuse_inference)
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.recorder, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.security = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeTriton":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)
