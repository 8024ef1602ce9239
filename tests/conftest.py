"""Shared fixtures: one tiny SYNTHETIC checkpoint (real Llama-3 vocabulary), its reference
encoder, engines, repositories and servers."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from jina_triton_serving.triton_process import free_port  # noqa: F401 - tests import it from here

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    from jina_triton_build.synth import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=7,
                                      tokenizer="real")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_dir):
    from jina_triton_build.checkpoint import open_checkpoint

    return open_checkpoint(tiny_checkpoint_dir)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from jina_triton_build.reference import ReferenceEncoder

    return ReferenceEncoder(tiny_checkpoint)


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def fp32_engines(tiny_checkpoint, reference, engine_cache):
    from jina_triton_build.engines import build_engines

    return build_engines(tiny_checkpoint, "fp32", engine_cache, reference=reference)


@pytest.fixture(scope="session")
def int8_engines(tiny_checkpoint, reference, engine_cache, fp32_engines):
    from jina_triton_build.engines import build_engines

    return build_engines(tiny_checkpoint, "int8", engine_cache, reference=reference)


def sample_texts() -> list[str]:
    """Texts of very different lengths (padded batches), several languages and scripts."""
    from jina_triton_build.corpus import corpus_entries

    by_lang: dict[str, list[str]] = {}
    for lang, sentence in corpus_entries():
        by_lang.setdefault(lang, []).append(sentence)
    return [
        "hi",
        by_lang["en"][3],
        by_lang["de"][12] + " " + by_lang["de"][13],
        " ".join(by_lang["fr"][:12]),
        by_lang["zh"][15],
        by_lang["ar"][10] + " " + by_lang["ru"][11],
        "  leading and trailing spaces  ",
        "emoji 🚀 and ünïcödé",
    ]


TEST_MAX_LENGTH = 64  # small, so that truncation really happens in the server tests
TEST_LIMITS = {"max_length": TEST_MAX_LENGTH, "max_text_bytes": 4096, "max_request_bytes": 65536,
               "max_request_tokens": 4096, "token_budget": 512, "preprocess_queue_delay_us": 5000}


def build_test_repository(checkpoint, out, cache, reference=None, **options):
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.repository import build_repository

    build_repository(checkpoint, out, BuildOptions(**{**TEST_LIMITS, **options}), cache_dir=cache, reference=reference)
    return out


def serve_test_repository(tmp_path_factory, name, checkpoint, cache, reference, **options):
    """The real Triton on a repository built with `options`, for a module's fixture to yield."""
    from jina_triton_serving.triton_process import TritonServer

    repository = build_test_repository(checkpoint, tmp_path_factory.mktemp(name) / "repo", cache, reference, **options)
    with TritonServer.on_free_ports(repository, log_file=repository.parent / "server.log") as triton:
        yield triton


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of a built tree that costs no disk: a tiny repository's four encoder folders hard-link one
    ~900 MB engine, which a plain copytree writes out four times (3.4 GB).
    Files over 1 MiB become hard links, so a test must unlink one before changing it; small ones are
    copied and free to edit."""
    from jina_triton_build.repository import link_or_copy

    def link_big_ones(src, dst):
        if os.path.getsize(src) > 1 << 20:
            link_or_copy(Path(src), Path(dst))
        else:
            shutil.copy2(src, dst)

    shutil.copytree(Path(source).resolve(), target, copy_function=link_big_ones)
    return target


def system_tool(command: str, *packages: str) -> str | None:
    """`command`'s path, installing Debian `packages` for it when it is missing and apt-get may run
    (root: CI's machine kind); None when it cannot be had."""
    found = shutil.which(command)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", *(packages or (command,))], capture_output=True, timeout=900,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which(command)


def keyed_gateway(triton, tmp_path_factory, key: str, name: str):
    """The gateway in front of `triton`, one API key, the test limits; for a module's fixture to yield."""
    from jina_triton_serving.gateway.process import GatewayProcess

    log = tmp_path_factory.mktemp(name) / "gateway.log"
    with GatewayProcess(triton, "--max-length", str(TEST_MAX_LENGTH), "--max-request-tokens", "4096",
                        env={"JINA_TRITON_API_KEY": key}, log_file=log) as process:
        yield process


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("repo") / "tiny", engine_cache, reference)


@pytest.fixture(scope="session")
def cuda_repository(tmp_path_factory, tiny_checkpoint, engine_cache, reference):
    """The `cuda` target; with no GPU here its encoders run PyTorch on the CPU in fp32."""
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("repo") / "cuda", engine_cache, reference,
                                 target="cuda", encoder_instances=1)


@pytest.fixture(scope="session")
def triton(tiny_repository, tmp_path_factory):
    """The real Triton server on the tiny repository, on free loopback ports."""
    from jina_triton_serving.triton_process import TritonServer

    log = tmp_path_factory.mktemp("triton") / "server.log"
    server = TritonServer.on_free_ports(tiny_repository, log_file=log)
    with server:
        yield server


@pytest.fixture(scope="session")
def tensorrt_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    """The `tensorrt` target: rendered and parsed here, never served (no TensorRT)."""
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("repo") / "tensorrt", engine_cache,
                                 reference, target="tensorrt", max_length=512)


@pytest.fixture(scope="session")
def triton_cuda(cuda_repository, tmp_path_factory):
    """The real Triton server on the `cuda` target (PyTorch encoders; fp32 on this CPU machine)."""
    from jina_triton_serving.triton_process import TritonServer

    server = TritonServer.on_free_ports(cuda_repository, log_file=tmp_path_factory.mktemp("triton-cuda") / "server.log")
    with server:
        yield server


@pytest.fixture(params=["cpu", "cuda"])
def any_target(request):
    """A served target by name: `cpu` (onnxruntime) or `cuda` (PyTorch)."""
    return request.getfixturevalue({"cpu": "triton", "cuda": "triton_cuda"}[request.param])


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
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


# a test needing an engine, a repository or a server is slow whatever its own marks say: `make test-fast`
# (-m "not server and not slow") runs the rest, in minutes
BUILT = {"fp32_engines", "int8_engines", "tiny_repository", "cuda_repository", "tensorrt_repository", "triton",
         "triton_cuda", "any_target"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if BUILT & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
