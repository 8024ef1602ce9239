"""The gateway as a process beside a Triton server: for the bench, the tests and the load tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..settings import LOCK_KEY_ENV
from ..child_launch import guarded
from ..triton_process import free_port


def gateway_command(triton: str, *args: str) -> list[str]:
    """The gateway's command line in front of the Triton gRPC endpoint `triton`."""
    return [sys.executable, "-m", "jina_triton_serving.gateway", "--triton", triton, *args]


def wait_listening(process: subprocess.Popen, host: str, port: int, timeout: float = 60.0) -> None:
    """Until the gateway `process` accepts connections on host:port (a wildcard host: on loopback);
    its exit first, or the timeout, raises RuntimeError."""
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {process.returncode} (its log says why)")
        try:
            socket.create_connection((target, port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the gateway did not listen on {host}:{port} within {timeout:.0f} s")


class GatewayProcess:
    def __init__(self, server, *args: str, port: int | None = None, env: dict | None = None,
                 log_file: Path | None = None, tls: bool = False):
        self.server, self.args, self.port = server, list(args), port or free_port()
        self.env, self.log_file, self.tls = env or {}, log_file, tls
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "GatewayProcess":
        command = gateway_command(self.server.grpc_url, "--port", str(self.port), *self.args)
        # without a log file its output is kept aside, to be told if it fails to start
        output = open(self.log_file, "ab") if self.log_file else tempfile.TemporaryFile()
        key = getattr(getattr(self.server, "security", None), "lock_key", None)  # a real TritonServer's
        lock = {LOCK_KEY_ENV: key} if key else {}
        self.process = subprocess.Popen(guarded(command), env={**os.environ, **lock, **self.env}, stdout=output,
                                        stderr=subprocess.STDOUT)
        try:
            wait_listening(self.process, "127.0.0.1", self.port)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {_tail(output, self.log_file)}") from None
        finally:
            output.close()  # the child holds its own copy
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(output, log_file: Path | None, size: int = 2000) -> str:
    """The end of what the gateway wrote: its log file, or the file its output was kept in."""
    if log_file:
        data = Path(log_file).read_bytes()
    else:
        output.seek(0)
        data = output.read()
    return data[-size:].decode(errors="replace").strip() or "it wrote nothing"
