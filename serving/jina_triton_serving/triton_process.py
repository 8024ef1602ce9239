"""Start the real Triton server bundled in the nvidia-pytriton wheel (or an unpacked copy of it).

The wheel ships `tritonserver`, the Python backend and one stub per Python version.
The stub embeds the libpython it was linked against (Debian's 3.11.2 here), so the
environment Triton runs in must come from that interpreter: checked at start-up
instead of failing in every model load.
"""
from __future__ import annotations

import contextlib
import hashlib
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jina_triton_client.contract import FORWARDED_HEADERS
from jina_triton_models.layout import default_cache_dir, digest, hold, private_dir

from .child_launch import SHM_DIR as SHM_PATH, guarded

STUB = "triton_python_backend_stub"
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace", "statistics")
ADMIN_KEY_HEADER = "admin-key"                      # Triton's restricted-API header over HTTP
GRPC_ADMIN_KEY_HEADER = "triton-grpc-protocol-" + ADMIN_KEY_HEADER   # ... and over gRPC
SHM_DIR = Path(SHM_PATH)  # where Triton's regions are (its own tmpfs there where allowed)
SHM_STUB_BYTES = 1 << 20                             # the Python backend's default region per stub
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The environment Triton and the Python stubs inherit: these names and prefixes only.
STUB_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
                            "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "TOKENIZERS_PARALLELISM",
                            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "JINA_TRITON_HOME"})
STUB_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "CUBLAS_", "CUDNN_", "PYTORCH_", "TORCH_", "ORT_")


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
            f"venv`, which picks it).")


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory: the Triton's Python backend plus the stub for this Python.

    Its name is stable (a digest of the Triton it belongs to and of the stub), it is private to
    this user, and the stub in it is checked by its SHA-256 before every start."""
    triton = triton_home()
    stub = _stub_source(triton)
    check_interpreter(stub)
    if stub.parent == triton / "backends" / "python":
        return triton / "backends"  # already complete (an NGC image)
    stub_digest = digest(stub)
    name = hashlib.sha256(f"{triton.resolve()}:{stub_digest}".encode()).hexdigest()[:16]
    root = private_dir(private_dir(private_dir(cache or default_cache_dir()) / "triton-backends") / name)
    python = private_dir(root / "python")
    for item in (triton / "backends" / "python").iterdir():
        link = python / item.name
        if item.is_file() and not link.is_symlink():
            link.symlink_to(item)
    target = python / STUB
    if not target.is_file() or digest(target) != stub_digest:
        shutil.copy2(stub, target)
    return root


_HANDED_OUT: set[int] = set()
_PICKING = threading.Lock()


def free_port() -> int:
    """A loopback port nobody listens on right now, below the kernel's ephemeral range where it can be:
    a port from that range can be taken by any outgoing connection before the server binds it. Never
    one this process handed out before: nothing listens on a port picked a moment ago yet, so a second
    pick could return it (Triton then refused to start, HTTP and gRPC on one port: 1 start in ~4,000)."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    candidates = random.sample(range(20000, low), min(32, low - 20000)) if low > 20100 else []
    with _PICKING:
        for port in [*candidates, *[0] * 8]:
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise ServeError("no free loopback port")


def command_line(pid: int) -> list[bytes] | None:
    """A process's argv from /proc (empty for a zombie), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def stub_model(argv: list[bytes] | None) -> tuple[str, str] | None:
    """(model, version) a Python-backend stub serves, from its argv; None for any other process."""
    if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1:  # a zombie has no argv
        version = Path(argv[1].decode(errors="replace")).parent  # .../<model>/<version>/model.py
        return version.parent.name, version.name
    return None


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
    read it in `ps`): user keys live in the gateway. At every start, wherever Triton listens,
    loopback included, its admin APIs (model load/unload, configs, shared memory, logging,
    trace, statistics) are locked with a throwaway key made for that start and known to this
    process (the supervisor reloads crashed models with it, the gateway's admin routes use it).
    Triton takes that key only on its command line: on a host shared with other users, they
    can read it in `ps`; the container (its own PID namespace) is the boundary.
    gRPC beyond loopback needs mutual TLS; HTTP (no TLS in Triton) beyond loopback needs an
    explicit `allow_insecure_http`."""
    tls_cert: Path | None = None      # gRPC TLS (Triton's HTTP endpoint has no TLS)
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # require client certificates signed by this CA
    allow_insecure_http: bool = False  # the operator's explicit choice to expose plaintext HTTP

    def __post_init__(self):
        self.lock_key = secrets.token_urlsafe(24)

    def admin_headers(self) -> dict:
        """For Triton's HTTP endpoint."""
        return {ADMIN_KEY_HEADER: self.lock_key}

    def grpc_admin_headers(self) -> dict:
        return {GRPC_ADMIN_KEY_HEADER: self.lock_key}

    def check_exposure(self, grpc_host: str, http_host: str) -> None:
        if grpc_host not in LOOPBACK and not (self.tls_cert and self.tls_client_ca):
            raise ServeError(f"Triton's gRPC endpoint on {grpc_host} would be reachable from the network without "
                             f"mutual TLS: give --tls-cert/--tls-key and --tls-client-ca (client certificates "
                             f"required), or keep it on loopback behind the gateway")
        if http_host not in LOOPBACK and not self.allow_insecure_http:
            raise ServeError(f"Triton's HTTP endpoint has no TLS and no authentication for inference: on "
                             f"{http_host} anyone on the network could use it. Keep it on loopback behind the "
                             f"gateway, or pass --allow-insecure-http to expose it on purpose")

    def arguments(self) -> list[str]:
        apis = ",".join(ADMIN_APIS)
        args = [f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={self.lock_key}",
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
    private_shm: bool = True           # a /dev/shm of its own where the system allows it
    metrics_host: str | None = None    # default: host (metrics hold no secret: 0.0.0.0 lets Prometheus in)
    process: subprocess.Popen | None = None
    stop_requested: bool = False
    failed: dict = field(default_factory=dict)   # models that failed to load at the last start
    models: list | None = None         # the models to load (default: every model of the repository)
    ports_picked: bool = False         # ours to pick again when another process takes one first
    _held: contextlib.ExitStack | None = field(default=None, repr=False)

    def __post_init__(self):
        self.shm_prefix = f"jina_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.security.check_exposure(self.host, self.http_host)

    @classmethod
    def from_options(cls, repository: Path, options, models: list | None = None) -> "TritonServer":
        """Triton as `serve` runs it (a settings.ServeOptions): its limits lowered through the environment,
        `models` loaded (default all)."""
        from jina_triton_pipeline.internals import limit_env

        security = Security(tls_cert=options.tls_cert, tls_key=options.tls_key, tls_client_ca=options.tls_client_ca,
                            allow_insecure_http=options.allow_insecure_http)
        return cls(repository, host=options.host, http_host=options.http_host, http_port=options.http_port,
                   grpc_port=options.grpc_port, metrics_port=options.metrics_port, metrics_host=options.metrics_host,
                   security=security, log_file=options.log_file, trace_endpoint=options.trace_endpoint,
                   extra_args=list(options.triton_args), models=models,
                   env={limit_env(name): str(value) for name, value in options.limits.items() if value})

    @classmethod
    def on_free_ports(cls, repository: Path, **settings) -> "TritonServer":
        return cls(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                   ports_picked=True, **settings)

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
                   "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models or ["*"]),
                   # a model that fails to load (an encoder below its parity gate) stays down, the rest serve
                   "--exit-on-error=false", "--strict-readiness=true", "--log-verbose=0"]
        if self.trace_endpoint:
            command += ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS",
                        "--trace-config=rate=0", f"--trace-config=opentelemetry,url={self.trace_endpoint}",
                        "--trace-config=opentelemetry,resource=service.name=jina-triton"]
        return command + self.security.arguments() + self.extra_args

    def environment(self) -> dict[str, str]:
        """What Triton and its stubs get: an allowlist of this process's environment (never a
        token, cloud credential or exporter header the models have no use for) plus our own."""
        venv_bin = str(self.python_env / "bin") if self.python_env else str(Path(sys.executable).parent)
        env = {name: value for name, value in os.environ.items()
               if name in STUB_ENV_NAMES or name.startswith(STUB_ENV_PREFIXES)}
        env.update(self.env)
        if self.python_env:  # a stub finds the venv's site-packages from PATH, with the base's home
            env["PYTHONHOME"] = sys.base_prefix
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", os.defpath)
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
        self.check_shm()
        if self._held is None:
            self._held = contextlib.ExitStack()
            self.repository = self._held.enter_context(hold(self.repository))
        output = open(self.log_file, "ab") if self.log_file else None
        size = _shm_total() if self.private_shm else None
        # dies with us, what it creates readable by its own user only, its shared memory private
        self.process = subprocess.Popen(guarded(self.command(), umask=0o077, private_shm=size),
                                        env=self.environment(), stdout=output,
                                        stderr=subprocess.STDOUT if output else None, start_new_session=True)
        return self

    @property
    def shm_dir(self) -> Path:
        """Where this server's shared-memory regions are: its own tmpfs when it has one."""
        try:
            if os.readlink(f"/proc/{self.process.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                return Path(f"/proc/{self.process.pid}/root") / SHM_DIR.relative_to("/")
        except OSError:
            pass
        return SHM_DIR

    def clear_shm(self) -> list[str]:
        """Remove the shared-memory regions a dead server of ours left behind on the shared /dev/shm
        (a private one went with the server)."""
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
            model = stub_model(command_line(pid))
            if model:
                found.setdefault(model, set()).add(pid)
        return found

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

    def _health(self, what: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/{what}", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def ready(self) -> bool:
        return self._health("ready")

    def metrics_up(self) -> bool:
        """Triton opens its metrics endpoint last, tens of ms after HTTP answers ready, and exits
        when its port is taken."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def live(self) -> bool:
        return self._health("live")

    def wait_ready(self, timeout: float = 600) -> dict[str, str]:
        """Wait until Triton has loaded what it can (its endpoints open only then). Returns the models
        that failed to load, with Triton's reason: they stay down while the rest serve, unless
        nothing a client calls (no ensemble) is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} while "
                                 f"loading the models{self._log_hint()}")
            endpoints_up = self.metrics_up()  # Triton opens it last, tens of ms after HTTP answers ready
            if endpoints_up and self.ready():
                self.failed = {}
                return self.failed
            if endpoints_up and self.live():
                self.failed = self.failed_models()
                if self.failed and all(name in self.failed for name in self._ensembles()):
                    self.stop()
                    raise ServeError("no ensemble loaded: " + "; ".join(f"{m}: {r}" for m, r in self.failed.items()))
                if self.failed:
                    return self.failed
            time.sleep(0.5)
        self.stop()
        raise ServeError(f"tritonserver was not ready after {timeout:.0f} s{self._log_hint()}")

    def failed_models(self) -> dict[str, str]:
        """model -> reason, for every model version Triton could not load."""
        import json

        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST",
                                         headers=self.security.admin_headers())
        with urllib.request.urlopen(request, timeout=10) as reply:
            return {entry["name"]: entry.get("reason", "") for entry in json.loads(reply.read())
                    if entry.get("state") not in ("READY", "LOADING")}

    def _ensembles(self) -> list[str]:
        return [config.parent.name for config in Path(self.repository).resolve().glob("*/config.pbtxt")
                if 'platform: "ensemble"' in config.read_text()]

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

        for attempt in range(3):
            self.start()
            try:
                self.wait_ready()
                break
            except BaseException as error:
                self.stop()
                if not (self.ports_picked and attempt < 2 and "already in use" in str(error)):
                    raise
                self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        StubSupervisor(self).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _shm_total() -> int:
    try:
        stats = os.statvfs(SHM_DIR)
        return stats.f_blocks * stats.f_frsize
    except OSError:
        return 1 << 30


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
