"""Upgrades without downtime on the tiny replica: (a) a rolling restart of two servers behind the
client's failover onto a new repository snapshot; (b) a new encoder version loaded through the
gateway's admin API while the old one serves, then the old one gone, the answers switching at a
recorded point. No request fails in either."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from conftest import build_test_repository, linked_copy
from jina_triton_client import EmbeddingClient, RetryPolicy

pytestmark = [pytest.mark.server, pytest.mark.slow]
PROBE = ["how do I reset my router?", "a second text, a little longer than the first one"]


class Load:
    """Threads embedding PROBE without pause; every answer and every failure is recorded."""

    def __init__(self, client, task="retrieval", threads=3):
        self.client, self.task, self.stop = client, task, threading.Event()
        self.answers, self.failures, self.lock = [], [], threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                vectors = self.client.embed(PROBE, task=self.task)
                with self.lock:
                    self.answers.append((started, time.monotonic(), vectors))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                with self.lock:
                    self.failures.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)


def test_a_rolling_restart_behind_failover_fails_no_request(tmp_path, tiny_checkpoint, engine_cache, fp32_engines,
                                                            reference):
    from jina_triton_serving.triton_process import TritonServer

    repository = build_test_repository(tiny_checkpoint, tmp_path / "repo", engine_cache, reference, encoder_instances=1)
    first = repository.resolve()
    servers = [TritonServer.on_free_ports(repository, log_file=tmp_path / f"server{i}.log") for i in range(2)]
    for server in servers:
        server.__enter__()
    try:
        client = EmbeddingClient([s.grpc_url for s in servers], timeout=120,
                                 retry=RetryPolicy(retries=30, backoff=0.1, max_backoff=1.0))
        with Load(client) as load:
            time.sleep(2)
            # the new version: another build of the repository, a new snapshot beside the served one
            build_test_repository(tiny_checkpoint, tmp_path / "repo", engine_cache, reference, encoder_instances=1,
                                  queue_delay_us=1000)
            assert repository.resolve() != first and first.is_dir()  # the served snapshot stays
            for server in servers:  # drain one (SIGTERM: in-flight requests finish), restart it on the new one
                server.stop()
                server.repository = repository.resolve()
                server.stop_requested = False
                server.__enter__()
                time.sleep(2)
        assert not load.failures, load.failures[:3]
        assert len(load.answers) > 20
        for server in servers:
            config = json.loads(urllib.request.urlopen(urllib.request.Request(
                f"http://{server.http_url}/v2/models/encoder_retrieval/config",
                headers=server.security.admin_headers()), timeout=10).read())
            assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 1000
    finally:
        for server in servers:
            server.stop()


def test_a_new_encoder_version_loads_beside_the_old_then_replaces_it(tmp_path, tiny_checkpoint, engine_cache,
                                                                       fp32_engines, reference):
    from jina_triton_serving.gateway.process import GatewayProcess
    from jina_triton_serving.triton_process import TritonServer

    repository = build_test_repository(tiny_checkpoint, tmp_path / "repo", engine_cache, reference, encoder_instances=1)
    (tmp_path / "admin.key").write_text("the-admin-key\n")
    with TritonServer.on_free_ports(repository, log_file=tmp_path / "server.log") as server, \
            GatewayProcess(server, "--admin-key-file", str(tmp_path / "admin.key"), log_file=tmp_path / "gw.log") as gw:
        client = EmbeddingClient(server.grpc_url, timeout=120, retry=RetryPolicy(retries=30, backoff=0.1, max_backoff=1.0))
        old = client.embed(PROBE, task="retrieval")
        new = client.embed(PROBE, task="clustering")  # version 2 of encoder_retrieval: another adapter's engine
        assert np.sum(old * new, axis=1).max() < 0.99
        linked_copy(repository / "encoder_clustering" / "1", repository / "encoder_retrieval" / "2")

        def admin(action, key="the-admin-key"):
            request = urllib.request.Request(f"{gw.url}/admin/models/encoder_retrieval/{action}", data=b"",
                                             method="POST", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request, timeout=300) as reply:
                    return reply.status
            except urllib.error.HTTPError as error:
                return error.code

        assert admin("load", key="wrong") == 401
        with Load(client) as load:
            time.sleep(2)
            started = time.monotonic()
            assert admin("load") == 200  # Triton loads version 2, then retires version 1
            finished = time.monotonic()
            time.sleep(2)
        assert not load.failures, load.failures[:3]
        kinds = [("old" if np.sum(v * old, axis=1).min() > 0.99999 else
                  "new" if np.sum(v * new, axis=1).min() > 0.99999 else "other", begun, ended)
                 for begun, ended, v in sorted(load.answers, key=lambda a: a[0])]
        assert {kind for kind, _, _ in kinds} == {"old", "new"}
        switch = next(begun for kind, begun, _ in kinds if kind == "new")
        assert started <= switch  # nothing new before the load was asked for
        assert all(kind == "new" for kind, begun, _ in kinds if begun > finished)  # after it returned: only new
        assert all(kind == "old" for kind, _, ended in kinds if ended < started)
        states = {(e["name"], e.get("version")): e.get("state") for e in json.loads(urllib.request.urlopen(
            urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST",
                                   headers=server.security.admin_headers()),
            timeout=10).read())}
        assert states[("encoder_retrieval", "2")] == "READY" and states[("encoder_retrieval", "1")] != "READY"
