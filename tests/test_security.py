"""Access control on the real server: loopback by default, TLS and a locked admin surface when
exposed, no user key on any command line (user keys live in the gateway: see test_gateway.py)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from jina_triton_client import EmbeddingClient, EmbeddingError

pytestmark = pytest.mark.server
RESTRICTED = "restricted, expecting header"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.cnf"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *extra, cwd=folder)
    return folder


@pytest.fixture(scope="module")
def secure(tiny_repository, certificates, tmp_path_factory):
    """gRPC on every interface: TLS with client certificates, admin APIs locked."""
    from jina_triton_serving.server import Security, TritonServer

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


def test_an_exposed_grpc_endpoint_needs_tls(tiny_repository):
    from jina_triton_serving.server import ServeError, TritonServer

    with pytest.raises(ServeError, match="without TLS"):
        TritonServer(tiny_repository, host="0.0.0.0")


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


def test_default_server_binds_loopback_with_no_key_on_its_command_line(triton):
    command = " ".join(triton.command())
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in command
    assert "restricted" not in command and "key" not in command.lower()
