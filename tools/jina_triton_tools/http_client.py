"""A minimal KServe v2 HTTP client (standard library only) for machines without tritonclient,
such as the GPU machine: JSON request, binary-data response."""
from __future__ import annotations

import http.client
import json
import threading

import numpy as np

DTYPES = {"FP32": np.float32, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64}


class HttpInfer:
    """One keep-alive connection per thread to a Triton HTTP endpoint (host:port)."""

    def __init__(self, address: str, timeout: float = 600):
        self.address, self.timeout, self.local = address, timeout, threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection(self.address, timeout=self.timeout)
        return self.local.connection

    def post(self, path: str, body: bytes) -> tuple[int, http.client.HTTPResponse, bytes]:
        """POST on this thread's connection; a connection the server closed while idle is reopened once."""
        for attempt in (0, 1):
            connection = self._connection()
            try:
                connection.request("POST", path, body, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                return reply.status, reply, reply.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                del self.local.connection
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def infer(self, model: str, texts: list[str], outputs: list[str], parameters: dict | None = None) -> dict:
        body = json.dumps({"inputs": [{"name": "text", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}],
                           "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
                           "parameters": parameters or {}}).encode()
        status, reply, payload = self.post(f"/v2/models/{model}/infer", body)
        if status != 200:
            raise RuntimeError(f"{model}: HTTP {status}: {payload[:300]!r}")
        header_length = int(reply.getheader("Inference-Header-Content-Length", len(payload)))
        header = json.loads(payload[:header_length])
        found, offset = {}, header_length
        for output in header["outputs"]:
            size = output["parameters"]["binary_data_size"]
            found[output["name"]] = np.frombuffer(payload[offset:offset + size], DTYPES[output["datatype"]]).reshape(
                output["shape"])
            offset += size
        return found
