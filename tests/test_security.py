"""Access control on the real server: TLS, admin key, API key, loopback by default."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import free_port
from jina_triton_client import EmbeddingClient, EmbeddingError

pytestmark = pytest.mark.server
ADMIN, API = "admin-secret", "api-secret"
ADMIN_GRPC = {"triton-grpc-protocol-admin-key": ADMIN}


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
    from jina_triton.serve import Security, TritonServer

    security = Security(admin_key=ADMIN, api_key=API, tls_cert=certificates / "server.pem",
                        tls_key=certificates / "server.key", tls_client_ca=certificates / "ca.pem")
    server = TritonServer.on_free_ports(tiny_repository, security=security,
                                        log_file=tmp_path_factory.mktemp("secure") / "server.log")
    with server:
        yield server


def _tls(certificates, client_cert=True) -> dict:
    tls = {"root_certificates": str(certificates / "ca.pem")}
    if client_cert:
        tls.update(certificate_chain=str(certificates / "client.pem"), private_key=str(certificates / "client.key"))
    return tls


def test_tls_client_with_the_test_ca_embeds(secure, certificates):
    with EmbeddingClient(secure.grpc_url, api_key=API, **_tls(certificates)) as client:
        assert client.embed(["over tls"], task="retrieval").shape == (1, 768)


def test_plaintext_client_is_refused(secure):
    client = EmbeddingClient(secure.grpc_url, api_key=API, timeout=5)
    client.retry.retries = 0
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):
        client.embed(["no tls"], task="retrieval")


def test_client_without_certificate_is_refused_by_mutual_tls(secure, certificates):
    client = EmbeddingClient(secure.grpc_url, api_key=API, timeout=5, **_tls(certificates, client_cert=False))
    client.retry.retries = 0
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):
        client.embed(["no client cert"], task="retrieval")


def test_inference_needs_the_api_key(secure, certificates):
    with pytest.raises(EmbeddingError, match="restricted, expecting header 'triton-grpc-protocol-api-key'"):
        EmbeddingClient(secure.grpc_url, **_tls(certificates)).embed(["no key"], task="retrieval")
    http = httpclient.InferenceServerClient(secure.http_url)
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"http"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="expecting header 'api-key'"):
        http.infer("embed_retrieval", [tensor])
    assert http.infer("embed_retrieval", [tensor], headers={"api-key": API}).as_numpy("embeddings").shape == (1, 768)


def _grpc_admin(secure, certificates):
    tls = _tls(certificates)
    return grpcclient.InferenceServerClient(secure.grpc_url, ssl=True, **tls)


def test_unauthenticated_client_cannot_change_or_read_the_setup(secure, certificates):
    client = _grpc_admin(secure, certificates)
    for call in (lambda: client.get_model_config("embed_retrieval"),
                 lambda: client.unload_model("embed_clustering"),
                 lambda: client.load_model("embed_clustering"),
                 lambda: client.get_model_repository_index(),
                 lambda: client.update_log_settings({"log_verbose_level": 1})):
        with pytest.raises(InferenceServerException, match="restricted, expecting header 'triton-grpc-protocol-admin-key'"):
            call()
    http = httpclient.InferenceServerClient(secure.http_url)
    with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
        http.get_model_config("embed_retrieval")
    with pytest.raises(InferenceServerException, match="expecting header 'admin-key'"):
        http.unload_model("embed_clustering")
    assert client.is_model_ready("embed_clustering")


def test_authenticated_client_can(secure, certificates):
    client = _grpc_admin(secure, certificates)
    config = client.get_model_config("embed_retrieval", headers=ADMIN_GRPC, as_json=True)
    assert config["config"]["name"] == "embed_retrieval"
    client.unload_model("embed_clustering", headers=ADMIN_GRPC)
    assert not client.is_model_ready("embed_clustering")
    client.load_model("embed_clustering", headers=ADMIN_GRPC)
    assert client.is_model_ready("embed_clustering")
    http = httpclient.InferenceServerClient(secure.http_url)
    assert http.get_model_config("embed_retrieval", headers={"admin-key": ADMIN})["name"] == "embed_retrieval"


def test_default_server_locks_the_admin_apis_and_binds_loopback(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_config("embed_retrieval")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.unload_model("embed_retrieval")
    command = " ".join(triton.command())
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in command
