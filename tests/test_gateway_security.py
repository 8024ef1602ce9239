"""The gateway closed by default and unhurt by its clients: no open door on a network address,
admission before any work, slow or oversized clients bounded, a client that leaves costs Triton
nothing more, request ids and odd fields that cannot break a response.

Most tests put the gateway in front of a recording stand-in for Triton's gRPC service (its
inference never answers), which shows what the real server cannot: which calls reached it and
whether they were cancelled."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from fake_grpc_triton import FakeTriton

KEY = "gateway-guard-key"
WAIT = 120  # seconds any event below may take on a slow host; no test measures speed


def _gateway(upstream, *args, env=None, log=None):
    from jina_triton_serving.gateway.process import GatewayProcess

    return GatewayProcess(upstream, *args, env={"JINA_TRITON_API_KEY": KEY, **(env or {})}, log_file=log)


def _run_gateway(*args, env=None):
    """The gateway as an operator starts it, for the ones that must refuse to start."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JINA_TRITON_")}
    return subprocess.run([sys.executable, "-m", "jina_triton_serving.gateway", "--triton", "127.0.0.1:1",
                           "--port", str(free_port()), *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=WAIT)


@pytest.fixture(scope="module")
def fake():
    with FakeTriton() as upstream:
        yield upstream


# -- closed by default ---------------------------------------------------------------
def test_a_network_address_without_keys_is_refused_unless_anonymous_is_asked_for(tmp_path):
    refused = _run_gateway("--host", "0.0.0.0")
    assert refused.returncode == 2 and "--allow-anonymous" in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "empty.keys").write_text("\n  \n")
    empty = _run_gateway("--host", "127.0.0.1", "--api-key-file", str(tmp_path / "empty.keys"))
    assert empty.returncode == 2 and "holds no key" in empty.stderr and "Traceback" not in empty.stderr

    class Nowhere:
        grpc_url = "127.0.0.1:1"

    clean = {k: "" for k in os.environ if k.startswith("JINA_TRITON_") and k.endswith("_KEY")}
    with _gateway(Nowhere(), "--host", "0.0.0.0", "--allow-anonymous", env={**clean, "JINA_TRITON_API_KEY": ""}) as gw:
        assert httpx.get(f"{gw.url}/health", timeout=WAIT).status_code == 200
    # started as the tests and tools start it, a gateway that refuses to start says why in the error
    with pytest.raises(RuntimeError, match="--allow-anonymous"):
        _gateway(Nowhere(), "--host", "0.0.0.0", env={**clean, "JINA_TRITON_API_KEY": ""}).start()


def test_serve_refuses_an_open_gateway_before_starting_triton(tiny_repository, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JINA_TRITON_")}
    done = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository",
                           str(tiny_repository), "--gateway-host", "0.0.0.0", "--grpc-port", str(free_port()),
                           "--http-port", str(free_port()), "--metrics-port", str(free_port())],
                          env=clean, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2 and "--allow-anonymous" in done.stderr
    assert "Traceback" not in done.stderr and "ready:" not in done.stderr  # Triton never started


# -- admission before work, slow clients, open connections -------------------------------
def _connect(gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT)
    return sock


def _headers(length: int, extra: str = "") -> bytes:
    return (f"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def _reply(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _in_flight(gateway) -> float:
    for line in httpx.get(f"{gateway.url}/metrics", timeout=WAIT).text.splitlines():
        if line.startswith("jina_gateway_in_flight "):
            return float(line.split()[1])
    return -1.0


def _eventually(predicate) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_full_gateway_refuses_before_reading_and_a_client_that_leaves_cancels_its_call(fake, tmp_path):
    body = json.dumps({"input": ["held open"]}).encode()
    with _gateway(fake, "--max-concurrency", "2", log=tmp_path / "gw.log") as gw:
        holders = []
        for _ in range(2):  # two requests that Triton never answers fill both slots
            sock = _connect(gw)
            sock.sendall(_headers(len(body)) + body)
            holders.append(sock)
        assert _eventually(lambda: fake.recorder.calls.count("ModelInfer embed_retrieval") == 2)
        late = _connect(gw)
        late.sendall(_headers(10_000_000))  # a 10 MB body announced, not one byte of it sent
        reply = _reply(late)
        assert reply.startswith(b"HTTP/1.1 429") and b"retry-after: 1" in reply.lower()
        late.close()
        for sock in holders:  # the callers leave: their calls to Triton are cancelled, their slots freed
            sock.close()
        assert _eventually(fake.recorder.infer_cancelled.is_set)
        assert _eventually(lambda: _in_flight(gw) == 0)
    statuses = [json.loads(line).get("status") for line in (tmp_path / "gw.log").read_text().splitlines()
                if line.startswith("{") and '"embeddings"' in line]
    assert statuses.count(499) == 2 and statuses.count(429) == 1


def test_slow_headers_and_slow_bodies_are_cut_off(fake):
    with _gateway(fake, "--header-timeout", "1", "--body-timeout", "1") as gw:
        slow_headers = _connect(gw)
        slow_headers.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\n")  # and never the rest
        assert slow_headers.recv(1024) == b""  # closed by the gateway, not by our timeout
        slow_body = _connect(gw)
        slow_body.sendall(_headers(1000) + b'{"input": ')
        reply = _reply(slow_body)
        assert reply.startswith(b"HTTP/1.1 408")
        assert httpx.get(f"{gw.url}/health", timeout=WAIT).status_code == 200


def test_open_connections_are_bounded_and_the_rest_still_served(fake):
    with _gateway(fake, "--max-connections", "12", "--header-timeout", "120") as gw:
        idle = [_connect(gw) for _ in range(10)]
        for sock in idle:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # headers begun, never finished
        assert httpx.get(f"{gw.url}/health", timeout=WAIT).status_code == 200  # the 11th is served
        more = [_connect(gw) for _ in range(6)]  # the 13th and later are over the bound
        assert _reply(more[-1]).startswith(b"HTTP/1.1 503")
        for sock in idle + more:
            sock.close()
        assert _eventually(lambda: httpx.get(f"{gw.url}/health", timeout=WAIT).status_code == 200)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_body_of_millions_of_values_is_refused_without_building_them(fake):
    bomb = b"[" + b"{}," * (5 << 20) + b"{}]"  # 15 MiB: ~5M dicts, about 400 MB as Python objects
    with _gateway(fake) as gw:
        before = _peak_rss_mb(gw.process.pid)
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: httpx.post(f"{gw.url}/v1/embeddings", content=bomb, timeout=WAIT,
                                                         headers={"Authorization": f"Bearer {KEY}"}), range(4)))
        assert all(r.status_code == 400 and r.json()["error"]["param"] == "body" for r in replies)
        grown = _peak_rss_mb(gw.process.pid) - before
        assert grown < 200, grown  # the bodies and their copies; parsing one would cost ~400 MB


# -- odd fields, request ids, readiness ---------------------------------------------------
@pytest.mark.parametrize("body, param", [
    (b'{"input": "x", "model": ["a", "b"]}', "model"), (b'{"input": "x", "model": {"name": "m"}}', "model"),
    (b'{"input": ' + b"[" * 1500 + b"]" * 1500 + b"}", "body"), (b'{"input": "x", "user": 7}', "user"),
])
def test_odd_fields_and_deep_nesting_are_400(fake, body, param):
    with _gateway(fake) as gw:
        reply = httpx.post(f"{gw.url}/v1/embeddings", content=body, timeout=WAIT,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert "Traceback" not in reply.text


def test_request_ids_are_plain_tokens_or_replaced(fake):
    with _gateway(fake) as gw:
        for sent, kept in ((b"rid-42.a:b_c", True), (b"caf\xc3\xa9-\xff", False), (b"x" * 200, False),
                           (b"a b", False)):
            sock = _connect(gw)
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nx-request-id: " + sent
                         + b"\r\n\r\n{}")
            reply = _reply(sock).decode("latin-1")
            sock.close()
            assert reply.startswith("HTTP/1.1 401"), reply  # no key sent: refused, but cleanly
            echoed = next(line.split(":", 1)[1].strip() for line in reply.split("\r\n")
                          if line.lower().startswith("x-request-id:"))
            assert (echoed == sent.decode()) if kept else (len(echoed) == 32 and echoed.isalnum()), (sent, echoed)


def test_ready_is_cached_so_probes_cost_triton_one_check(fake):
    with _gateway(fake) as gw:
        before = fake.recorder.calls.count("ServerReady")
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda _: httpx.get(f"{gw.url}/ready", timeout=WAIT).status_code, range(20)))
        asked = fake.recorder.calls.count("ServerReady") - before
    assert codes == [200] * 20 and 1 <= asked <= 2, asked  # 2: a host slow enough to outlive the cache


def test_more_inputs_than_the_gateway_takes_are_400_naming_input(fake):
    before = len(fake.recorder.calls)
    with _gateway(fake, "--max-inputs", "3") as gw:
        reply = httpx.post(f"{gw.url}/v1/embeddings", json={"input": ["a", "b", "c", "d"]}, timeout=WAIT,
                           headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "input"
        assert "more than the limit of 3" in reply.json()["error"]["message"]
    assert not [call for call in fake.recorder.calls[before:] if call.startswith("ModelInfer")]  # Triton never asked


def test_the_gateway_speaks_https_with_its_certificate(fake, certificates):
    from jina_triton_serving.gateway.process import GatewayProcess

    with GatewayProcess(fake, "--tls-cert", str(certificates / "server.pem"), "--tls-key",
                        str(certificates / "server.key"), env={"JINA_TRITON_API_KEY": KEY}, tls=True) as gw:
        assert gw.url.startswith("https://")
        secure = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                           verify=str(certificates / "ca.pem"), timeout=WAIT)
        assert secure.status_code == 200 and secure.json()["data"]
        with pytest.raises(httpx.HTTPError):  # plaintext on the TLS port is no way in
            httpx.get(f"http://127.0.0.1:{gw.port}/v1/models", timeout=WAIT)


def test_ready_is_false_while_serve_reports_a_model_down(fake, tmp_path):
    """`jina-triton serve` writes which models lost a stub or failed to load; /ready says so."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"triton": "up", "down": ["encoder_clustering"]}))
    with _gateway(fake, "--status-file", str(status)) as gw:
        reply = httpx.get(f"{gw.url}/ready", timeout=WAIT)
        assert reply.status_code == 503 and "encoder_clustering is down" in " ".join(reply.json()["problems"])
    status.write_text(json.dumps({"triton": "up", "down": []}))
    with _gateway(fake, "--status-file", str(status)) as gw:
        assert httpx.get(f"{gw.url}/ready", timeout=WAIT).status_code == 200
