"""`jina-triton serve` as users run it: a working example, the gateway beside Triton, no key on any
command line, a tritonserver that dies comes back, a clean stop."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.server
API_KEY, ADMIN_KEY = "api-key-c0ffee-7f3a9", "admin-key-d00d-55e1"


def _get(url, headers=None, timeout=10, data: bytes | None = None):
    """(status, body) of a GET (a POST with `data`); (None, b"") when nothing answers."""
    try:
        request = urllib.request.Request(url, data=data, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return None, b""


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def serving(tiny_repository, tmp_path_factory):
    """One `jina-triton serve` process with the gateway, keys from the environment and a file."""
    folder = tmp_path_factory.mktemp("serve")
    (folder / "admin.key").write_text(ADMIN_KEY + "\n")
    (folder / "admin.key").chmod(0o600)
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway")}
    env = {**os.environ, "JINA_TRITON_API_KEY": API_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository", str(tiny_repository),
         "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
         "--gateway-port", str(ports["gateway"]), "--admin-key-file", str(folder / "admin.key")],
        stdout=open(folder / "serve.log", "w"), stderr=subprocess.STDOUT, text=True, env=env)
    log = folder / "serve.log"
    try:
        assert _wait(lambda: "INFO try: " in log.read_text() or process.poll() is not None, 240), log.read_text()[-3000:]
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        assert _get(f"{gateway}/health")[0] == 200, "serve said ready before its gateway listened"
        assert _wait(lambda: _get(f"{gateway}/ready")[0] == 200, 120), log.read_text()[-3000:]
        yield {"process": process, "ports": ports, "log": log, "gateway": gateway}
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_prints_a_working_example(serving):
    lines = serving["log"].read_text().splitlines()
    assert any("SERVING A SYNTHETIC" in line for line in lines)
    example = next(line.split("INFO try: ", 1)[1] for line in lines if "INFO try: " in line)
    url = re.search(r"(http://\S+/infer)", example).group(1)
    body = re.search(r"-d '(.*)'$", example).group(1)
    request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer = json.loads(reply.read())
    assert answer["outputs"][0]["name"] == "embeddings" and answer["outputs"][0]["shape"] == [1, 256]


def test_the_gateway_holds_the_keys_and_none_is_on_a_command_line(serving):
    request = urllib.request.Request(f"{serving['gateway']}/v1/embeddings", method="POST",
                                     data=json.dumps({"input": "hi", "dimensions": 32}).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert len(json.loads(reply.read())["data"][0]["embedding"]) == 32
    assert _get(f"{serving['gateway']}/v1/models")[0] == 401
    listing = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert f"--grpc-port={serving['ports']['grpc']}" in listing  # Triton is running
    assert API_KEY not in listing and ADMIN_KEY not in listing
    triton = next(line for line in listing.splitlines() if f"--grpc-port={serving['ports']['grpc']}" in line)
    assert "--grpc-restricted-protocol=model-repository" in triton  # locked on loopback too, with a throwaway key
    pids = [int(p) for p in subprocess.run(["pgrep", "-f", f"--grpc-port={serving['ports']['grpc']}"],
                                           capture_output=True, text=True).stdout.split()]
    for pid in pids:  # nor in Triton's environment
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert API_KEY.encode() not in environ and ADMIN_KEY.encode() not in environ


def _triton_pid(grpc_port: int) -> int:
    return int(subprocess.run(["pgrep", "-f", f"tritonserver.*--grpc-port={grpc_port}"], capture_output=True,
                              text=True).stdout.split()[0])


def _regions(pid: int, prefix: str) -> set[str]:
    """This server's shared-memory regions, in its own /dev/shm when it has one, and on the host's."""
    found = set()
    for folder in (Path(f"/proc/{pid}/root/dev/shm"), Path("/dev/shm")):
        try:
            found |= {path.name for path in folder.glob(prefix + "*")}
        except OSError:
            pass
    return found


def test_a_dead_tritonserver_comes_back_and_readiness_says_so(serving):
    grpc = serving["ports"]["grpc"]
    pid = _triton_pid(grpc)
    prefix = next(part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                  if "shm-region-prefix-name" in part).rsplit("=", 1)[1]
    before = _regions(pid, prefix)
    assert before, (prefix, sorted(os.listdir("/dev/shm")))
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: _get(f"{serving['gateway']}/ready")[0] == 503, 120), "readiness did not drop"
    http = f"http://127.0.0.1:{serving['ports']['http']}/v2/health/ready"
    assert _wait(lambda: _get(http)[0] == 200, 180), serving["log"].read_text()[-3000:]
    assert _wait(lambda: _get(f"{serving['gateway']}/ready")[0] == 200, 120)
    log = serving["log"].read_text()
    assert "tritonserver exited with code" in log and "restarting tritonserver" in log
    left = {path.name for path in Path("/dev/shm").glob(prefix + "*")}
    assert not left & before, "the dead server's regions were left on /dev/shm"
    after = _regions(_triton_pid(grpc), prefix)
    assert after and not after & before  # the new server's regions are new ones


def test_sigterm_stops_everything(serving):
    process = serving["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0
    leftover = subprocess.run(["pgrep", "-f", f"--grpc-port={serving['ports']['grpc']}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "tritonserver outlived serve"
    assert _get(f"{serving['gateway']}/health", timeout=2)[0] is None, "the gateway outlived serve"


def test_ready_waits_until_the_gateway_listens():
    """serve names the gateway only once it accepts connections; a gateway that exits first is an error."""
    from jina_triton_serving.gateway.process import wait_listening

    port = free_port()
    late = subprocess.Popen([sys.executable, "-c", "import socket, time; time.sleep(1.5); s = socket.socket(); "
                             f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"])
    try:
        started = time.monotonic()
        wait_listening(late, "0.0.0.0", port, timeout=30)
        assert time.monotonic() - started >= 1.4
    finally:
        late.kill()
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        wait_listening(dead, "127.0.0.1", free_port(), timeout=30)


def test_serve_gives_up_after_its_restarts_a_minute(tiny_repository, tmp_path):
    """--max-restarts 1: the first death is restarted, the second within a minute ends serve (exit 1)."""
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository", str(tiny_repository), "--no-gateway",
         "--max-restarts", "1", "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
         "--metrics-port", str(ports["metrics"])], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    ready = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
    try:
        for death in (1, 2):  # each kill once serve has seen Triton ready (a death while loading ends serve at once)
            assert _wait(lambda: log.read_text().count("INFO ready: gRPC") == death and _get(ready)[0] == 200, 240), \
                log.read_text()[-3000:]
            os.kill(_triton_pid(ports["grpc"]), signal.SIGKILL)
            if death == 1:
                assert _wait(lambda: "restarting tritonserver" in log.read_text(), 120), log.read_text()[-3000:]
        assert process.wait(timeout=120) == 1
        assert "died 1 times within a minute: giving up" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
