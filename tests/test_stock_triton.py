"""A repository any Triton can serve: the bundled `tritonserver` started as a platform starts it
(its own command line, no `jina-triton serve`, no PYTHONPATH, no variable of ours), on a repository
`jina-triton build` wrote:

(a) the stubs' Python environment holds only what the repository's requirements.txt lists,
    installed by pip from it (nothing of this project);
(b) --pack-env: the repository's own python_env.tar.gz, the server's PATH holding nothing but the
    system's Python;
(c) the repository on object storage: Triton reads it from a local S3 server (moto) itself.

Every ensemble answers and matches the reference as the parity tests check it."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO_ROOT, TEST_MAX_LENGTH, build_test_repository, free_port
from expected import Expected, assert_outputs_match
from jina_triton_build.self_contained import PACKED_ENV, PROJECT_PACKAGES, REQUIREMENTS_FILE, STUB_REQUIREMENTS
from jina_triton_client.contract import TASKS
from jina_triton_serving.triton_process import backend_dir, triton_home
from test_server import TEXTS_LONG, infer

pytestmark = pytest.mark.server
SYSTEM_PATH = "/usr/bin:/bin"
PYTHON_MODELS = ("preprocess", "postprocess", *(f"encoder_{task.replace('-', '_')}" for task in TASKS))


@pytest.fixture(scope="module")
def plain_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("stock") / "repo", engine_cache, reference)


@pytest.fixture(scope="module")
def packed_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("stock-packed") / "repo", engine_cache,
                                 reference, pack_env=True)


@pytest.fixture(scope="module")
def requirements_env(plain_repository, tmp_path_factory) -> Path:
    """A venv of the stub's interpreter holding what requirements.txt lists and nothing else."""
    env = tmp_path_factory.mktemp("requirements-env") / "env"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env)],
                   check=True)
    site = next((env / "lib").glob("python3*")) / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "-r",
                    str(plain_repository / REQUIREMENTS_FILE)], check=True)
    return env


@contextlib.contextmanager
def stock_triton(repository: str, path: str, log: Path, extra_env: dict | None = None, timeout: float = 240,
                 args: tuple = ()):
    """tritonserver on its own command line; the environment a container would give it."""
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    libraries = triton_home().parent.parent / "nvidia_pytriton.libs"  # where a stock image has them in place
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LD_LIBRARY_PATH": str(libraries),
           **(extra_env or {})}
    command = [str(triton_home() / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backend_dir()}", f"--http-port={ports['http']}",
               f"--grpc-port={ports['grpc']}", f"--metrics-port={ports['metrics']}", *args]
    process = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    server = SimpleNamespace(grpc_url=f"127.0.0.1:{ports['grpc']}", http_url=f"127.0.0.1:{ports['http']}",
                             process=process, log=log)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline and not _ready(server):
            time.sleep(0.5)
        assert process.poll() is None and _ready(server), log.read_text()[-4000:]
        yield server
    finally:
        process.terminate()
        process.wait(60)


def _ready(server) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def _assert_every_task_matches(server, repository: Path, reference):
    expected = Expected(reference, repository, TEST_MAX_LENGTH)
    for task, (input_type, dims) in zip(TASKS, [("query", 32), ("document", 256), ("query", 768), ("document", 64)]):
        got = infer(server, "grpc", task, TEXTS_LONG, input_type=input_type, dimensions=dims)
        assert_outputs_match(got, expected.floats(TEXTS_LONG, task, input_type, dims, "END"), expected.tables,
                             expected.raw(TEXTS_LONG, task, input_type, dims, "END"))


def test_a_repository_carries_its_code_and_its_requirements(plain_repository, packed_repository):
    for model in PYTHON_MODELS:
        version = plain_repository / model / "1"
        for package in PROJECT_PACKAGES:
            assert (version / package / "__init__.py").is_file(), (model, package)
        assert not list(version.rglob("__pycache__"))
    listed = [line for line in (plain_repository / REQUIREMENTS_FILE).read_text().splitlines()
              if line and not line.startswith("#")]
    assert [line.split("==")[0] for line in listed] == list(STUB_REQUIREMENTS["cpu"])
    assert all("==" in line for line in listed)
    assert not (plain_repository / PACKED_ENV).exists() and (packed_repository / PACKED_ENV).is_file()
    for model in PYTHON_MODELS:
        config = (packed_repository / model / "config.pbtxt").read_text()
        assert f'"$$TRITON_MODEL_DIRECTORY/../{PACKED_ENV}"' in config, model
        assert "EXECUTION_ENV_PATH\" value: { string_value: \"\" }" in (plain_repository / model / "config.pbtxt").read_text()


def test_the_requirements_environment_holds_nothing_of_this_project(requirements_env):
    for package in PROJECT_PACKAGES:
        found = subprocess.run([str(requirements_env / "bin" / "python"), "-c", f"import {package}"],
                               capture_output=True, text=True, env={"PATH": SYSTEM_PATH})
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, package


def test_a_stock_triton_with_only_the_requirements_serves_every_task(plain_repository, requirements_env, reference,
                                                                     tmp_path):
    with stock_triton(str(plain_repository), f"{requirements_env / 'bin'}:{SYSTEM_PATH}", tmp_path / "a.log") as server:
        _assert_every_task_matches(server, plain_repository, reference)


def test_without_an_environment_the_models_say_what_is_missing(plain_repository, tmp_path):
    """The control: the same server with the system's Python alone cannot load the models."""
    log = tmp_path / "bare.log"
    with pytest.raises(AssertionError):
        with stock_triton(str(plain_repository), SYSTEM_PATH, log, timeout=120):
            pass
    assert "No module named 'numpy'" in log.read_text()


def test_a_stock_triton_serves_the_packed_environment(packed_repository, reference, tmp_path):
    with stock_triton(str(packed_repository), SYSTEM_PATH, tmp_path / "b.log") as server:
        _assert_every_task_matches(server, packed_repository, reference)
    used = [line for line in server.log.read_text().splitlines() if "Using Python execution env" in line]
    assert len(used) == len(PYTHON_MODELS) and all(line.endswith(f'/repo/{PACKED_ENV}"') for line in used), used


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback, with the credentials a client passes it."""
    pytest.importorskip("moto", reason="moto[server] is in the dev extras: pip install -e '.[dev]'")
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=2)
                break
            time.sleep(0.2)
        yield SimpleNamespace(url=url, env=credentials)
    finally:
        process.terminate()
        process.wait(30)


def _upload(s3_server, repository: Path, bucket: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=bucket)
    root = repository.resolve()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root)}")


def _stock_manifest_args(key: str) -> tuple:
    """The arguments KServe's stock runtime gets from inferenceservice-stock.yaml, the Secret's key in."""
    manifest = REPO_ROOT / "docker" / "kubernetes" / "kserve" / "inferenceservice-stock.yaml"
    args = yaml.safe_load(manifest.read_text())["spec"]["predictor"]["model"]["args"]
    return tuple(arg.replace("$(ADMIN_KEY)", key) for arg in args)


def test_a_stock_triton_serves_the_packed_repository_from_object_storage(s3_server, packed_repository, reference,
                                                                          tmp_path):
    """Triton copies each model from s3:// to a local folder of its own; the archive at the root comes
    with it (the log names it there), and the ensembles keep their version folders. Started with the
    stock KServe manifest's arguments: its admin APIs answer only with the key."""
    _upload(s3_server, packed_repository, "models", "jina")
    key = "stock-admin-key-3f9a"
    with stock_triton(f"s3://{s3_server.url}/models/jina", SYSTEM_PATH, tmp_path / "s3.log", s3_server.env,
                      args=_stock_manifest_args(key)) as server:
        _assert_every_task_matches(server, packed_repository, reference)
        index = f"http://{server.http_url}/v2/repository/index"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(index, data=b"{}", method="POST"), timeout=10)
        assert refused.value.code in (401, 403)
        request = urllib.request.Request(index, data=b"{}", method="POST", headers={"admin-key": key})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
    used = [line for line in server.log.read_text().splitlines() if "Using Python execution env" in line]
    assert len(used) == len(PYTHON_MODELS) and all(re.search(rf'/tmp/folder\w+/{PACKED_ENV}"$', line) for line in used), used
