"""Starting the real Triton on an empty repository: ready means every endpoint answers (metrics open
last), and a port picked for it that another process takes first is picked again."""
from __future__ import annotations

import socket
import urllib.request

import pytest

from jina_triton_serving.triton_process import TritonServer, free_port

pytestmark = pytest.mark.server


def test_a_picked_port_is_below_the_ephemeral_range_and_free():
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(20):
        port = free_port()
        assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_metrics_port_is_picked_again_and_ready_means_metrics_answer(tmp_path):
    (tmp_path / "repo").mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = TritonServer.on_free_ports(tmp_path / "repo", log_file=tmp_path / "server.log")
        taken = server.metrics_port = squatter.getsockname()[1]
        with server:
            assert server.metrics_port != taken
            with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
                assert reply.status == 200
            assert server.ready()
    assert "already in use" in (tmp_path / "server.log").read_text()


def test_ports_picked_one_after_another_are_never_the_same(monkeypatch):
    """Nothing listens on a picked port until its server starts: a second pick must not return it
    (Triton refused to start with HTTP and gRPC on one port)."""
    import random

    from jina_triton_serving.triton_process import free_port

    monkeypatch.setattr(random, "sample", lambda population, count: [population[0]] * count)
    picked = [free_port() for _ in range(3)]
    assert len(set(picked)) == 3, picked
