"""Access control on the real server: admin APIs locked at every start (loopback included),
mutual TLS for gRPC beyond loopback, plaintext HTTP beyond loopback only on purpose, request data
in /dev/shm private to the server's user, no secret in the stubs' environment, private and stable
backend and cache folders, no user key on any command line (user keys live in the gateway)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from jina_triton_client import EmbeddingClient, EmbeddingError

pytestmark = pytest.mark.server
RESTRICTED = "restricted, expecting header"


@pytest.fixture(scope="module")
def secure(tiny_repository, certificates, tmp_path_factory):
    """gRPC on every interface: TLS with client certificates, admin APIs locked."""
    from jina_triton_serving.triton_process import Security, TritonServer

    security = Security(tls_cert=certificates / "server.pem", tls_key=certificates / "server.key",
                        tls_client_ca=certificates / "ca.pem")
    server = TritonServer.on_free_ports(tiny_repository, host="0.0.0.0", security=security,
                                        log_file=tmp_path_factory.mktemp("secure") / "server.log")
    with server:
        yield server


def _tls(certificates, client_cert=True) -> dict:
    tls = {"root_certificates": str(certificates / "ca.pem")}
    if client_cert:
        tls.update(certificate_chain=str(certificates / "client.pem"), private_key=str(certificates / "client.key"))
    return tls


def test_tls_client_with_the_test_ca_embeds(secure, certificates):
    with EmbeddingClient(secure.grpc_url, **_tls(certificates)) as client:
        vectors = client.embed(["over TLS"], task="retrieval")
    assert vectors.shape == (1, 768) and abs(float(np.linalg.norm(vectors)) - 1) < 1e-5


def test_plaintext_client_is_refused(secure):
    client = EmbeddingClient(secure.grpc_url, timeout=5)
    client.retry.retries = 0
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):
        client.embed(["x"], task="retrieval")


def test_client_without_certificate_is_refused_by_mutual_tls(secure, certificates):
    client = EmbeddingClient(secure.grpc_url, timeout=5, **_tls(certificates, client_cert=False))
    client.retry.retries = 0
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):
        client.embed(["x"], task="retrieval")


def _grpc(secure, certificates):
    return grpcclient.InferenceServerClient(secure.grpc_url, ssl=True, **_tls(certificates))


def _admin_calls(client, headers=None):
    """Every admin surface: repository, config, shared memory, trace, logging, statistics."""
    return {
        "config": lambda: client.get_model_config("embed_retrieval", headers=headers),
        "unload": lambda: client.unload_model("embed_clustering", headers=headers),
        "load": lambda: client.load_model("embed_clustering", headers=headers),
        "index": lambda: client.get_model_repository_index(headers=headers),
        "log settings": lambda: client.update_log_settings({"log_verbose_level": 1}, headers=headers),
        "shared memory": lambda: client.register_system_shared_memory("x", "/jina_probe", 64, headers=headers),
        "shared memory status": lambda: client.get_system_shared_memory_status(headers=headers),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=headers),
        "statistics": lambda: client.get_inference_statistics("embed_retrieval", headers=headers),
    }


@pytest.mark.parametrize("key", [None, "a-wrong-key"])
def test_without_the_key_nobody_changes_or_reads_the_setup(secure, certificates, key):
    client = _grpc(secure, certificates)
    headers = {"triton-grpc-protocol-admin-key": key} if key else None
    for name, call in _admin_calls(client, headers).items():
        with pytest.raises(InferenceServerException, match=RESTRICTED if key is None else "restricted|admin-key") as error:
            call()
        assert "StatusCode.UNAVAILABLE" in str(error.value.status()), name
    http = httpclient.InferenceServerClient(secure.http_url)
    for call in (lambda: http.get_model_config("embed_retrieval", headers={"admin-key": key} if key else None),
                 lambda: http.unload_model("embed_clustering", headers={"admin-key": key} if key else None),
                 lambda: http.get_trace_settings(headers={"admin-key": key} if key else None),
                 lambda: http.get_inference_statistics(headers={"admin-key": key} if key else None)):
        with pytest.raises(InferenceServerException, match="admin-key"):
            call()
    http.close()  # an open keep-alive connection holds Triton's shutdown for its 30 s exit timeout
    assert client.is_model_ready("embed_clustering")


def test_the_servers_own_lock_key_opens_them(secure, certificates):
    """The throwaway key of this start (the supervisor's) works; it is no user secret."""
    client = _grpc(secure, certificates)
    headers = {"triton-grpc-protocol-admin-key": secure.security.lock_key}
    assert client.get_model_config("embed_retrieval", headers=headers, as_json=True)["config"]["name"] == "embed_retrieval"
    client.unload_model("embed_clustering", headers=headers)
    assert not client.is_model_ready("embed_clustering")
    client.load_model("embed_clustering", headers=headers)
    assert client.is_model_ready("embed_clustering")


SECRETS = {"HF_TOKEN": "hf_secret_5e1f", "AWS_SECRET_ACCESS_KEY": "aws-secret-77d2",
           "OTEL_EXPORTER_OTLP_HEADERS": "authorization=otel-secret-9a1", "JINA_TRITON_API_KEY": "user-key-3c4d"}


@pytest.fixture(scope="module")
def loopback(tiny_repository, tmp_path_factory):
    """The default server (loopback only), started from an environment that holds secrets."""
    from jina_triton_serving.triton_process import TritonServer

    with mock.patch.dict(os.environ, SECRETS):
        server = TritonServer.on_free_ports(tiny_repository, log_file=tmp_path_factory.mktemp("loop") / "server.log")
        server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


PROBE_CONFIG = {"name": "probe", "backend": "python", "max_batch_size": 0,
                "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
                "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}]}


def _probe_files(marker: Path) -> dict:
    code = (f"class TritonPythonModel:\n    def initialize(self, args):\n        open({str(marker)!r}, 'w').write('ran')\n"
            f"    def execute(self, requests):\n        return []\n")
    return {"file:1/model.py": code.encode()}


def test_on_loopback_no_caller_without_the_key_loads_code_unloads_or_reads_the_setup(loopback, tmp_path):
    client = grpcclient.InferenceServerClient(loopback.grpc_url)
    marker = tmp_path / "ran"
    with pytest.raises(InferenceServerException, match=RESTRICTED):
        client.load_model("probe", config=json.dumps(PROBE_CONFIG), files=_probe_files(marker))
    assert not marker.exists() and not client.is_model_ready("probe")
    for name, call in _admin_calls(client).items():
        with pytest.raises(InferenceServerException, match=RESTRICTED):
            call()
    http = httpclient.InferenceServerClient(loopback.http_url)
    for call in (lambda: http.get_model_config("embed_retrieval"), lambda: http.unload_model("embed_clustering"),
                 lambda: http.get_model_repository_index(), lambda: http.get_inference_statistics(),
                 lambda: http.get_trace_settings(), lambda: http.get_log_settings()):
        with pytest.raises(InferenceServerException, match="admin-key"):
            call()
    http.close()
    assert client.is_model_ready("embed_clustering")  # inference, health and metadata stay open
    with EmbeddingClient(loopback.grpc_url) as embed:
        assert embed.embed(["still served"]).shape == (1, 768)


def test_the_lock_is_all_that_stops_it_the_servers_own_key_loads_code(loopback, tmp_path):
    """The positive control: with this start's key (the supervisor's) the same load runs its code."""
    client = grpcclient.InferenceServerClient(loopback.grpc_url)
    marker = tmp_path / "ran"
    headers = loopback.security.grpc_admin_headers()
    client.load_model("probe", config=json.dumps(PROBE_CONFIG), files=_probe_files(marker), headers=headers)
    try:
        assert marker.read_text() == "ran"
    finally:
        client.unload_model("probe", headers=headers)
    assert loopback.security.lock_key in " ".join(loopback.command())  # on Triton's command line: see README


def test_request_data_in_shared_memory_is_out_of_other_users_reach(loopback):
    """The Python backend makes its regions 0644 whatever the umask: on this machine Triton gets a
    /dev/shm of its own, which no other process sees (elsewhere the regions would have to be 0600)."""
    with EmbeddingClient(loopback.grpc_url) as client:
        client.embed(["what travels through /dev/shm"])
    regions = list(loopback.shm_dir.glob(loopback.shm_prefix + "*"))
    assert regions, "no shared-memory region of this server found"
    if loopback.shm_dir != Path("/dev/shm"):
        assert not list(Path("/dev/shm").glob(loopback.shm_prefix + "*")), "regions visible on the shared /dev/shm"
        assert loopback.shm_dir.stat().st_mode & 0o077 == 0
    else:
        modes = {region.name: oct(region.stat().st_mode & 0o777) for region in regions}
        assert all(region.stat().st_mode & 0o077 == 0 for region in regions), modes


def test_no_secret_of_the_launching_environment_reaches_triton_or_a_stub(loopback):
    pids = [loopback.process.pid] + [pid for pids in loopback.stub_pids().values() for pid in pids]
    assert len(pids) > 4
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for name, value in SECRETS.items():
            assert name.encode() + b"=" not in environ and value.encode() not in environ, (pid, name)
        assert b"PATH=" in environ


def test_grpc_beyond_loopback_needs_mutual_tls_and_http_an_explicit_flag(tiny_repository, certificates):
    from jina_triton_serving.triton_process import Security, ServeError, TritonServer

    tls_only = Security(tls_cert=certificates / "server.pem", tls_key=certificates / "server.key")
    with pytest.raises(ServeError, match="mutual TLS"):
        TritonServer(tiny_repository, host="0.0.0.0", security=tls_only)
    with pytest.raises(ServeError, match="--allow-insecure-http"):
        TritonServer(tiny_repository, http_host="0.0.0.0")
    exposed = TritonServer(tiny_repository, http_host="0.0.0.0", security=Security(allow_insecure_http=True))
    assert "--http-address=0.0.0.0" in exposed.command()


def test_the_backend_folder_is_private_stable_and_checked_by_sha256(tmp_path):
    from jina_triton_serving.triton_process import STUB, _stub_source, backend_dir, triton_home

    first = backend_dir(tmp_path)
    assert backend_dir(tmp_path) == first and len(list((tmp_path / "triton-backends").iterdir())) == 1
    for folder in (tmp_path, tmp_path / "triton-backends", first, first / "python"):
        assert folder.stat().st_mode & 0o077 == 0, folder
    stub = first / "python" / STUB
    original = _stub_source(triton_home()).read_bytes()
    stub.write_bytes(bytes(len(original)))  # same size, other content: a size check would keep it
    backend_dir(tmp_path)
    assert stub.read_bytes() == original


def test_the_build_cache_is_private_and_records_sha256(tmp_path):
    from jina_triton_build.cache import CacheEntry, digest

    entry = CacheEntry(tmp_path / "cache" / "engines" / "abc")
    assert (tmp_path / "cache").stat().st_mode & 0o077 == 0 and entry.directory.stat().st_mode & 0o077 == 0
    (tmp_path / "file").write_bytes(b"engine bytes")
    assert digest(tmp_path / "file") == "sha256:" + __import__("hashlib").sha256(b"engine bytes").hexdigest()


def test_the_gpu_check_works_in_a_fresh_private_folder():
    from jina_triton_tools.gpu_check import add_arguments, workdir_for

    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    first, second = workdir_for(args), workdir_for(args)
    try:
        assert first != second and first.stat().st_mode & 0o077 == 0
    finally:
        first.rmdir(), second.rmdir()
