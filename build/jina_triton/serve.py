"""Start the real Triton server bundled in the nvidia-pytriton wheel.

The wheel ships `tritonserver`, the Python backend and one stub per Python
version. The stub embeds the libpython it was linked against (Debian's
3.11.2 here), so the environment Triton runs in must come from that
interpreter: checked at start-up instead of failing in every model load.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jina_triton_client.contract import ADMIN_APIS, ADMIN_KEY_HEADER, API_KEY_HEADER

STUB = "triton_python_backend_stub"


class ServeError(RuntimeError):
    pass


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServeError("nvidia-pytriton is not installed: run `make venv` (or pip install "
                         "'nvidia-pytriton==0.7.0')") from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _stub_source(triton: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    return stub


def check_interpreter(stub: Path) -> None:
    """The stub's libpython must belong to the interpreter this venv was made from."""
    try:
        linked = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return  # no ldd: nothing to check against
    match = re.search(r"libpython\S+ => (\S+)", linked)
    if not match:
        return
    library = Path(match.group(1)).resolve()
    base = Path(sys.base_prefix).resolve()
    if base not in library.parents:
        raise ServeError(
            f"the Triton Python stub links {library}, but this environment was made from the "
            f"Python at {sys.base_prefix}; models importing ssl/transformers would fail to load. "
            f"Rebuild the venv from the interpreter that owns that library (here: `rm -rf .venv && "
            f"make venv`, which uses /usr/bin/python3.11; see platform-notes §9).")


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory: the wheel's Python backend plus the stub for this Python."""
    triton = pytriton_dir()
    stub = _stub_source(triton)
    check_interpreter(stub)
    root = cache or Path(os.environ.get("JINA_TRITON_CACHE") or Path.home() / ".cache" / "jina-triton")
    python = root / "triton-backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (triton / "backends" / "python").iterdir():
        link = python / item.name
        if item.is_file() and not link.exists():
            link.symlink_to(item)
    target = python / STUB
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return python.parent


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the launching process dies."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _children(root: int) -> list[int]:
    """Every descendant pid of `root`, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Security:
    """Who may do what. Without an admin key the admin APIs are locked with a random one."""
    admin_key: str | None = None      # model-repository, model-config, shared-memory, logging, trace
    api_key: str | None = None        # inference, when set
    tls_cert: Path | None = None      # gRPC TLS (Triton's HTTP endpoint has no TLS)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by this CA

    def __post_init__(self):
        # without a user's key the admin APIs still get one: known only to this process,
        # which uses it to reload a model whose stub died (see TritonServer.supervise)
        self.effective_admin_key = self.admin_key or secrets.token_urlsafe(32)

    def arguments(self) -> list[str]:
        admin = self.effective_admin_key
        apis = ",".join(ADMIN_APIS)
        args = [f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={admin}",
                f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={admin}",
                "--model-control-mode=explicit", "--load-model=*"]
        if self.api_key:
            args += [f"--grpc-restricted-protocol=inference:{API_KEY_HEADER}={self.api_key}",
                     f"--http-restricted-api=inference:{API_KEY_HEADER}={self.api_key}"]
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ServeError("TLS needs both a server certificate and its key")
        if self.tls_cert:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls_cert}",
                     f"--grpc-server-key={self.tls_key}"]
            if self.tls_client_ca:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.tls_client_ca}"]
        elif self.tls_client_ca:
            raise ServeError("client-certificate verification needs --tls-cert and --tls-key")
        return args


@dataclass
class TritonServer:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    http_host: str | None = None      # default: host
    security: Security = field(default_factory=Security)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    process: subprocess.Popen | None = None
    stop_requested: bool = False

    @classmethod
    def on_free_ports(cls, repository: Path, **settings) -> "TritonServer":
        return cls(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **settings)

    @property
    def http_url(self) -> str:
        return f"{self.http_host or self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [str(pytriton_dir() / "bin" / "tritonserver"),
                f"--model-repository={Path(self.repository).resolve()}",
                f"--backend-directory={backend_dir()}",
                f"--http-address={self.http_host or self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false",
                "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
                *self.security.arguments(), *self.extra_args]

    def environment(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {**os.environ, **self.env}
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # the stub finds its bundled libcudart relative to where the wheel put it
        libs = pytriton_dir().parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        purelib = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [purelib, env.get("PYTHONPATH")]))
        return env

    def start(self) -> "TritonServer":
        output = open(self.log_file, "ab") if self.log_file else None
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=output,
                                        stderr=subprocess.STDOUT if output else None,
                                        start_new_session=True, preexec_fn=die_with_parent)
        return self

    # -- supervision -------------------------------------------------------------
    def stubs(self) -> dict[str, int]:
        """Live Python-backend stubs of this server: model name -> how many."""
        counts: dict[str, int] = {}
        for pid in _children(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1:
                model = Path(argv[1].decode()).parent.parent.name
                counts[model] = counts.get(model, 0) + 1
        return counts

    def reload(self, model: str) -> None:
        """Unload, then load: a plain load of a loaded model with unchanged files is a no-op."""
        for action in ("unload", "load"):
            request = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/{action}",
                                             data=b"{}", method="POST",
                                             headers={ADMIN_KEY_HEADER: self.security.effective_admin_key})
            with urllib.request.urlopen(request, timeout=300):
                pass

    def supervise(self, interval: float = 1.0, on_reload=None) -> threading.Thread:
        """Triton 2.51 does not restart a dead Python stub: its model answers 'Stub process
        ... is not healthy' for good. This thread reloads such a model."""
        process = self.process

        def watch():
            expected = self.stubs()
            while self.process is process and process.poll() is None and not self.stop_requested:
                time.sleep(interval)
                current = self.stubs()
                for model, count in expected.items():
                    if current.get(model, 0) < count and process.poll() is None:
                        try:
                            self.reload(model)
                            if on_reload:
                                on_reload(model)
                        except (urllib.error.URLError, OSError):
                            continue
                for model, count in self.stubs().items():  # instances may come up late
                    expected[model] = max(count, expected.get(model, 0))

        thread = threading.Thread(target=watch, name="triton-supervisor", daemon=True)
        thread.start()
        return thread

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} while "
                                 f"loading the models{self._log_hint()}")
            if self.ready():
                return
            time.sleep(0.5)
        self.stop()
        raise ServeError(f"tritonserver was not ready after {timeout:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        if not self.log_file or not Path(self.log_file).is_file():
            return " (see its output above)"
        tail = Path(self.log_file).read_text(errors="replace").splitlines()[-15:]
        return "; last log lines:\n" + "\n".join(tail)

    def terminate(self) -> None:
        """Ask Triton to stop (SIGTERM) without waiting: safe inside a signal handler."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self, grace: float = 40) -> int:
        """Wait for Triton to exit; once asked to stop, kill it after `grace` seconds."""
        asked = None
        while True:
            try:
                return self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if asked is None and self.stop_requested:
                    asked = time.monotonic()
                if asked is not None and time.monotonic() - asked > grace:
                    self.kill()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after `timeout` seconds."""
        if not self.process:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.supervise()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
