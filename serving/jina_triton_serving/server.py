"""Start the real Triton server bundled in the nvidia-pytriton wheel (or an unpacked copy of it).

The wheel ships `tritonserver`, the Python backend and one stub per Python version.
The stub embeds the libpython it was linked against (Debian's 3.11.2 here), so the
environment Triton runs in must come from that interpreter: checked at start-up
instead of failing in every model load.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from jina_triton_client.contract import FORWARDED_HEADERS

STUB = "triton_python_backend_stub"
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace", "statistics")
ADMIN_KEY_HEADER = "admin-key"                      # Triton's restricted-API header
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"        # ... over gRPC
SHM_DIR = Path("/dev/shm")
SHM_STUB_BYTES = 1 << 20                             # the Python backend's default region per stub
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeError(RuntimeError):
    pass


def triton_home() -> Path:
    """$JINA_TRITON_HOME (an unpacked Triton, e.g. on a GPU machine), else the pytriton wheel's."""
    if os.environ.get("JINA_TRITON_HOME"):
        return Path(os.environ["JINA_TRITON_HOME"])
    try:
        import pytriton
    except ImportError as exc:
        raise ServeError("nvidia-pytriton is not installed: run `make venv` (or pip install "
                         "'nvidia-pytriton==0.7.0')") from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _stub_source(triton: Path) -> Path:
    """The pytriton wheel keeps one stub per Python version; an NGC image has its one in place."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for stub in (triton / "python_backend_stubs" / version / STUB, triton / "backends" / "python" / STUB):
        if stub.is_file():
            return stub
    raise ServeError(f"this Triton has no Python-backend stub for Python {version} "
                     f"(looked in {triton / 'python_backend_stubs' / version}); use a Python from 3.8 to 3.13")


def check_interpreter(stub: Path) -> None:
    """The stub's libpython must belong to the interpreter this venv was made from."""
    try:
        linked = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return  # no ldd: nothing to check against
    if re.search(r"libpython\S+ => not found", linked):
        raise ServeError(f"the Triton Python stub needs a shared libpython{sys.version_info.major}."
                         f"{sys.version_info.minor} that this system lacks; build the venv from a Python "
                         f"that ships one (`make venv PYTHON=...`, see the README)")
    match = re.search(r"libpython\S+ => (\S+)", linked)
    if not match:
        return
    library = Path(match.group(1)).resolve()
    base = Path(sys.base_prefix).resolve()
    if base not in library.parents:
        raise ServeError(
            f"the Triton Python stub links {library}, but this environment was made from the "
            f"Python at {sys.base_prefix}; models importing ssl/transformers would fail to load. "
            f"Rebuild the venv from the interpreter that owns that library (`rm -rf .venv && make "
            f"venv`, which picks it; see platform-notes §9).")


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory: the Triton's Python backend plus the stub for this Python."""
    triton = triton_home()
    stub = _stub_source(triton)
    check_interpreter(stub)
    if stub.parent == triton / "backends" / "python":
        return triton / "backends"  # already complete (an NGC image)
    root = cache or Path(os.environ.get("JINA_TRITON_CACHE") or Path.home() / ".cache" / "jina-triton")
    python = root / "triton-backends" / f"python-{abs(hash(str(triton))) % 10**8}"
    python.mkdir(parents=True, exist_ok=True)
    for item in (triton / "backends" / "python").iterdir():
        link = python / item.name
        if item.is_file() and not link.exists():
            link.symlink_to(item)
    target = python / STUB
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    backends = python.parent / python.name.replace("python-", "backends-")
    backends.mkdir(exist_ok=True)
    if not (backends / "python").exists():
        (backends / "python").symlink_to(python)
    return backends


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


def descendants(root: int) -> list[int]:
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
    """Who may reach what. No user key is ever on Triton's command line (anyone on the host can
    read it in `ps`): user keys live in the gateway. Triton listens on loopback unless told
    otherwise; then its gRPC endpoint needs TLS, and the admin APIs are locked with a
    throwaway key made at each start (known to this process, which reloads crashed models)."""
    tls_cert: Path | None = None      # gRPC TLS (Triton's HTTP endpoint has no TLS)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by this CA
    lock_admin: bool = False

    def __post_init__(self):
        self.lock_key = secrets.token_urlsafe(24) if self.lock_admin else None

    def admin_headers(self) -> dict:
        return {ADMIN_KEY_HEADER: self.lock_key} if self.lock_key else {}

    def arguments(self) -> list[str]:
        args = []
        if self.lock_key:
            apis = ",".join(ADMIN_APIS)
            args += [f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={self.lock_key}",
                     f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={self.lock_key}"]
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
    host: str = "127.0.0.1"            # gRPC
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    http_host: str = "127.0.0.1"       # Triton's HTTP has no TLS: loopback unless asked
    security: Security = field(default_factory=Security)
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    trace_endpoint: str | None = None  # OTLP/HTTP traces of every request carrying a traceparent
    python_env: Path | None = None     # the venv the stubs run in (default: this interpreter's)
    metrics_host: str | None = None    # default: host (metrics hold no secret: 0.0.0.0 lets Prometheus in)
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    _held: contextlib.ExitStack | None = field(default=None, repr=False)

    def __post_init__(self):
        self.shm_prefix = f"jina_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        if self.host not in LOOPBACK and not self.security.tls_cert:
            raise ServeError(f"Triton's gRPC endpoint on {self.host} would be open to the network without TLS: "
                             f"give --tls-cert/--tls-key (and --tls-client-ca to require client "
                             f"certificates), or keep it on loopback behind the gateway")
        if (self.host not in LOOPBACK or self.http_host not in LOOPBACK) and not self.security.lock_key:
            self.security = replace(self.security, lock_admin=True)

    @classmethod
    def on_free_ports(cls, repository: Path, **settings) -> "TritonServer":
        return cls(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), **settings)

    @property
    def http_url(self) -> str:
        return f"{self.http_host}:{self.http_port}"

    @property
    def local_host(self) -> str:
        """Where a client on this machine reaches the gRPC and metrics endpoints."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        host = self.metrics_host or self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        forwarded = "^(" + "|".join(FORWARDED_HEADERS) + ")$"
        command = [str(triton_home() / "bin" / "tritonserver"),
                   f"--model-repository={Path(self.repository).resolve()}",
                   f"--backend-directory={backend_dir()}",
                   f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                   f"--http-address={self.http_host}", f"--http-port={self.http_port}",
                   f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                   f"--metrics-address={self.metrics_host or self.host}", f"--metrics-port={self.metrics_port}",
                   "--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-config=summary_latencies=true",
                   f"--grpc-header-forward-pattern={forwarded}", f"--http-header-forward-pattern={forwarded}",
                   "--model-control-mode=explicit", "--load-model=*",
                   "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0"]
        if self.trace_endpoint:
            command += ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS",
                        "--trace-config=rate=0", f"--trace-config=opentelemetry,url={self.trace_endpoint}",
                        "--trace-config=opentelemetry,resource=service.name=jina-triton"]
        return command + self.security.arguments() + self.extra_args

    def environment(self) -> dict[str, str]:
        venv_bin = str(self.python_env / "bin") if self.python_env else str(Path(sys.executable).parent)
        env = {**os.environ, **self.env}
        if self.python_env:  # a stub finds the venv's site-packages from PATH, with the base's home
            env["PYTHONHOME"] = sys.base_prefix
        for name in [name for name in env if name.endswith("_KEY") and name.startswith("JINA_TRITON_")]:
            del env[name]  # the models need no secret; keep them out of Triton's environment
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # the stub finds its bundled libraries relative to where the wheel put them
        libs = triton_home().parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        purelib = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [purelib, env.get("PYTHONPATH")]))
        return env

    def check_shm(self) -> None:
        """Every stub keeps a region in /dev/shm that grows to the largest message it moved."""
        stubs = sum(_instance_counts(Path(self.repository)).values())
        need = stubs * shm_per_stub(Path(self.repository))
        try:
            stats = os.statvfs(SHM_DIR)
        except OSError:
            return
        free = stats.f_bavail * stats.f_frsize
        if free < need:
            raise ServeError(f"/dev/shm has {free >> 20} MiB free; the {stubs} Python-backend stubs need up to "
                             f"{need >> 20} MiB; give it more (docker run --shm-size=1g, or an emptyDir with "
                             f"medium: Memory on Kubernetes)")

    def start(self) -> "TritonServer":
        """Start Triton on the repository's current snapshot, held (never pruned) until it stops."""
        from jina_triton_build.repository import hold

        self.check_shm()
        if self._held is None:
            self._held = contextlib.ExitStack()
            self.repository = self._held.enter_context(hold(self.repository))
        output = open(self.log_file, "ab") if self.log_file else None
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=output,
                                        stderr=subprocess.STDOUT if output else None,
                                        start_new_session=True, preexec_fn=die_with_parent)
        return self

    def clear_shm(self) -> list[str]:
        """Remove the shared-memory regions a dead server of ours left behind."""
        removed = []
        for path in SHM_DIR.glob(self.shm_prefix + "*"):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                pass
        return removed

    def stub_pids(self) -> dict[tuple[str, str], set[int]]:
        """Live Python-backend stubs of this server: (model, version) -> their pids."""
        found: dict[tuple[str, str], set[int]] = {}
        for pid in descendants(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1:  # a zombie has no argv
                version = Path(argv[1].decode()).parent  # .../<model>/<version>/model.py
                found.setdefault((version.parent.name, version.name), set()).add(pid)
        return found

    def stubs(self) -> dict[tuple[str, str], int]:
        """How many live stubs each (model, version) has."""
        return {key: len(pids) for key, pids in self.stub_pids().items()}

    def repository_index(self) -> dict[tuple[str, str], str]:
        """(model, version) -> state (READY, UNAVAILABLE, ...) from the repository API."""
        import json

        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                         headers=self.security.admin_headers())
        with urllib.request.urlopen(request, timeout=10) as reply:
            return {(entry["name"], str(entry.get("version", ""))): entry.get("state", "")
                    for entry in json.loads(reply.read())}

    def model_action(self, model: str, action: str) -> None:
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/{action}",
                                         data=b"{}", method="POST", headers=self.security.admin_headers())
        with urllib.request.urlopen(request, timeout=300):
            pass

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
        self.stop_requested = True
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
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        self.clear_shm()
        if self._held is not None:
            self._held.close()
            self._held = None
        return code

    def __enter__(self) -> "TritonServer":
        from .supervisor import StubSupervisor

        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        StubSupervisor(self).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _instance_counts(repository: Path) -> dict[str, int]:
    """Python-backend instances per model, from the rendered configs."""
    counts = {}
    for config in Path(repository).resolve().glob("*/config.pbtxt"):
        text = config.read_text()
        if 'backend: "python"' in text:
            found = re.search(r"instance_group\s*\[\s*\{\s*count:\s*(\d+)", text)
            counts[config.parent.name] = int(found.group(1)) if found else 1
    return counts


def shm_per_stub(repository: Path) -> int:
    """The largest message a stub moves: a full request's text, or its padded ids and mask."""
    import json

    try:
        options = json.loads((Path(repository) / "manifest.json").read_text())["options"]
        tensors = options["max_batch_size"] * options["max_length"] * 8 * 2
        return SHM_STUB_BYTES + max(tensors, options["max_request_bytes"])
    except (OSError, KeyError, ValueError):
        return 16 << 20
