"""The CPU image, built from docker/Dockerfile.cpu and run on a local Docker engine.

No image registry is reachable on this machine kind, so the build arguments stand in: the base is a
Debian made with debootstrap (the Dockerfile installs Debian's Python 3.11 into it), torch comes from
the local CPU wheel and the rest from PyPI, verified with the host's CA bundle (both through
docker/build-extras/ in a copy of the tree). The engine is started when none runs (and stopped
after); the image is tagged by the hash of its inputs, so a second run on the same machine reuses
it. Then, as users run it: with a checkpoint, without one, the Kubernetes Deployment's read-only
repository, too small a /dev/shm."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT, free_port, system_tool
from test_cli_serve import _get

pytestmark = [pytest.mark.server, pytest.mark.slow]
BASE_TAG = "jina-triton-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
KEY = "image-key-5b7e"
IMAGE_INPUTS = ("docker/Dockerfile.cpu", "docker/install-python.sh", "docker/requirements-cpu.txt", "pyproject.toml",
                "README.md", "client", "build", "serving", "tools", "model_repository")


def _docker(*args, check=True, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {result.stdout[-2000:]}{result.stderr[-3000:]}")
    return result


def _engine_up() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    """A running Docker engine: this machine's, else one started here (Debian's docker.io)."""
    if _engine_up():
        yield
        return
    if not system_tool("dockerd", "docker.io") or not system_tool("debootstrap"):
        pytest.skip("no Docker engine runs and none can be installed here (apt-get install docker.io "
                    "debootstrap, as root)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none",
                               "--storage-driver=overlay2"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _engine_up() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        if not _engine_up():
            pytest.skip(f"dockerd did not start here: {log.read_text()[-1500:]}")
        yield
    finally:
        daemon.terminate()
        daemon.wait(60)


@pytest.fixture(scope="module")
def base_image(docker_engine, tmp_path_factory) -> str:
    """Debian bookworm, minbase, from the mirror apt uses (no registry needed)."""
    if _docker("image", "inspect", BASE_TAG, check=False).returncode == 0:
        return BASE_TAG
    rootfs = tmp_path_factory.mktemp("rootfs") / "bookworm"
    made = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", "-", BASE_TAG], stdin=tar.stdout, capture_output=True, text=True,
                              timeout=600)
    tar.wait()
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_TAG


def _tree_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return sorted(name for name in listed if (REPO_ROOT / name).is_file())


def _pip_setting(name: str) -> list[str]:
    """A pip setting as pip resolves it (its environment, then its config files): `pip config list`."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    values = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] == name:
            values += value.strip().strip("'\"").split()
    return values


def _torch_wheel() -> Path | None:
    folders = [Path(value) for value in _pip_setting("find-links")]
    return next((wheel for folder in folders for wheel in sorted(folder.glob("torch-2.13.0+cpu-cp311-*.whl"))), None)


def _ca_bundle() -> Path | None:
    return next((Path(value) for value in _pip_setting("cert") if Path(value).is_file()), None)


def image_tag(base: str, files: list[str], stand_ins: list[Path]) -> str:
    """The image's name for these inputs: the Dockerfile, what it copies, the stand-ins, the base."""
    digest = hashlib.sha256(_docker("image", "inspect", "--format", "{{.Id}}", base).stdout.encode())
    for name in files:
        if name.startswith(IMAGE_INPUTS):
            digest.update(name.encode() + b"\0" + (REPO_ROOT / name).read_bytes())
    for path in stand_ins:
        digest.update(path.name.encode() + str(path.stat().st_size).encode())
    return f"jina-triton-cpu:test-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="module")
def cpu_image(base_image, tmp_path_factory) -> str:
    wheel, ca = _torch_wheel(), _ca_bundle()
    if wheel is None:
        pytest.skip("the torch 2.13.0 CPU wheel is not in pip's find-links (PyPI's torch is the CUDA build)")
    files = _tree_files()
    tag = image_tag(base_image, files, [wheel] + ([ca] if ca else []))
    if _docker("image", "inspect", tag, check=False).returncode == 0:
        return tag  # built before on this machine from the same inputs
    context = tmp_path_factory.mktemp("image-context")
    for name in files:
        if not name.startswith(("tests/", "loadtest/")):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, context / name)
    extras = context / "docker" / "build-extras"
    shutil.copy2(wheel, extras / wheel.name)
    if ca:
        shutil.copy2(ca, extras / "ca-bundle.crt")
    started = time.monotonic()
    _docker("build", "--network", "host", "-f", "docker/Dockerfile.cpu", "--build-arg", f"BASE_IMAGE={base_image}",
            "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple", "-t", tag, ".", cwd=context, timeout=1800)
    print(f"built {tag} in {time.monotonic() - started:.0f} s")
    older = _docker("images", "--format", "{{.Repository}}:{{.Tag}}", "jina-triton-cpu").stdout.split()
    for stale in (name for name in older if name.startswith("jina-triton-cpu:test-") and name != tag):
        _docker("rmi", stale, check=False)  # one test image per machine: the inputs' hash names it
    shutil.rmtree(context, ignore_errors=True)
    return tag


# -- running it ------------------------------------------------------------------------
@contextlib.contextmanager
def container(image: str, *args: str, docker_args: tuple = (), name: str | None = None):
    name = name or f"jina-test-{os.getpid()}-{free_port()}"
    _docker("run", "-d", "--name", name, "--network", "host", *docker_args, image, *args)
    try:
        yield name
    finally:
        _docker("rm", "-f", name, check=False)


def _wait_ready(name: str, url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _get(url, timeout=30)[0] == 200:
            return
        if _docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true":
            break
        time.sleep(2)
    raise AssertionError(f"{name} never became ready: {_docker('logs', name, check=False).stderr[-4000:]}")


def _ports() -> dict:
    return {name: free_port() for name in ("gateway", "http", "grpc", "metrics")}


def _port_args(ports: dict) -> list[str]:
    return [f"--{name}-port={port}" for name, port in ports.items()]


@pytest.fixture(scope="module")
def volumes(tiny_checkpoint_dir, tmp_path_factory) -> dict:
    """A cache the image's user (uid 1000) may write, a read-only checkpoint, the keys as files."""
    root = tmp_path_factory.mktemp("image-volumes")
    cache, models, keys = root / "cache", root / "models", root / "keys"
    for folder in (cache, models, keys):
        folder.mkdir()
    (keys / "api-keys").write_text(KEY + "\n")
    (keys / "admin-key").write_text("image-admin-key-0c4d\n")
    for path in (cache, models, keys, *keys.iterdir()):
        os.chown(path, 1000, 1000)
    for path in [tiny_checkpoint_dir, *tiny_checkpoint_dir.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o755 if path.is_dir() else path.stat().st_mode | 0o644)
    return {"checkpoint": tiny_checkpoint_dir, "cache": cache, "models": models, "keys": keys}


def test_the_image_runs_as_uid_1000_and_carries_what_the_synthetic_path_needs(cpu_image):
    assert _docker("run", "--rm", "--entrypoint", "id", cpu_image, "-u").stdout.strip() == "1000"
    imported = _docker("run", "--rm", "--entrypoint", "python3", cpu_image, "-c",
                       "import quicktok, onnxruntime, tokenizers, torch; print('ok')", check=False)
    assert imported.stdout.strip() == "ok", imported.stderr[-2000:]


def test_with_a_checkpoint_it_serves_behind_its_key_and_stops_cleanly(cpu_image, volumes, reference):
    ports = _ports()
    mounts = ("--shm-size=1g", "-e", f"JINA_TRITON_API_KEY={KEY}", "-v", f"{volumes['checkpoint']}:/checkpoint:ro",
              "-v", f"{volumes['cache']}:/cache")
    with container(cpu_image, "--checkpoint", "/checkpoint", "--max-length", "64", *_port_args(ports),
                   docker_args=mounts) as name:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        _wait_ready(name, f"{gateway}/ready")
        body = b'{"input": ["how do I reset my router?"], "task": "retrieval.query"}'
        assert _get(f"{gateway}/v1/embeddings", {"content-type": "application/json"}, 30, body)[0] == 401
        status, reply = _get(f"{gateway}/v1/embeddings", {"content-type": "application/json",
                                                          "authorization": f"Bearer {KEY}"}, 30, body)
        assert status == 200, reply[:500]
        got = np.array(json.loads(reply)["data"][0]["embedding"])
        want = reference.encode(["how do I reset my router?"], "retrieval", "query", max_length=64)[0]
        assert float(got @ want) > 0.9999  # both unit vectors: the parity tests' bar for fp32
        stopped = time.monotonic()
        _docker("stop", "-t", "60", name)
        assert time.monotonic() - stopped < 60
        assert _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"


def test_without_a_checkpoint_it_says_what_is_missing(cpu_image):
    ran = _docker("run", "--rm", "--network", "host", cpu_image, check=False, timeout=300)
    output = ran.stdout + ran.stderr
    assert ran.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "/checkpoint has no config.json" in output


def test_the_kubernetes_deployment_serves_its_read_only_repository(cpu_image, volumes):
    """The Deployment's own commands: the init container builds into /models, the server serves it
    mounted read-only."""
    pod = yaml.safe_load((REPO_ROOT / "docker" / "kubernetes" / "base" / "deployment.yaml").read_text())
    spec = pod["spec"]["template"]["spec"]
    build = spec["initContainers"][0]["command"]
    server = next(c for c in spec["containers"] if c["name"] == "server")["command"]
    common = ("-e", "JINA_TRITON_CACHE=/cache", "-v", f"{volumes['cache']}:/cache")
    built = _docker("run", "--rm", "--network", "host", *common, "-v", f"{volumes['checkpoint']}:/checkpoint:ro",
                    "-v", f"{volumes['models']}:/models", "--entrypoint", build[0], cpu_image, *build[1:],
                    "--max-length", "64", timeout=900, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    ports = _ports()
    mounts = (*common, "--shm-size=1g", "-v", f"{volumes['models']}:/models:ro", "-v", f"{volumes['keys']}:/keys:ro",
              "--entrypoint", server[0])
    with container(cpu_image, *server[1:], *_port_args(ports), docker_args=mounts) as name:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        _wait_ready(name, f"{gateway}/ready", timeout=300)
        status, _ = _get(f"{gateway}/v1/embeddings", {"content-type": "application/json",
                                                      "authorization": f"Bearer {KEY}"}, 30, b'{"input": "a"}')
        assert status == 200


def test_too_small_a_dev_shm_gives_the_documented_message(cpu_image, volumes):
    ran = _docker("run", "--rm", "--network", "host", "--shm-size=1m", "-e", f"JINA_TRITON_API_KEY={KEY}",
                  "-v", f"{volumes['checkpoint']}:/checkpoint:ro", "-v", f"{volumes['cache']}:/cache", cpu_image,
                  "--checkpoint", "/checkpoint", "--max-length", "64", *_port_args(_ports()), check=False, timeout=900)
    output = ran.stdout + ran.stderr
    assert ran.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "/dev/shm has" in output, output[-3000:]


def test_compose_brings_the_cpu_service_up_and_down(cpu_image, volumes, tmp_path):
    """docker/compose.cpu.yaml as written (its own network, published ports), on the image built here;
    Prometheus and Grafana images cannot be made here, so compose.yaml's stack is not run."""
    compose = system_tool("docker-compose")
    if compose is None:
        pytest.skip("no docker-compose (apt-get install docker-compose)")
    ports = _ports()
    env = {**os.environ, "JINA_TRITON_IMAGE": cpu_image, "JINA_TRITON_API_KEY": KEY,
           "CHECKPOINT_DIR": str(volumes["checkpoint"]), "GATEWAY_PORT": str(ports["gateway"]),
           "METRICS_PORT": str(ports["metrics"])}
    project = ["-p", f"jinatest{os.getpid()}", "-f", str(REPO_ROOT / "docker" / "compose.cpu.yaml")]

    def run(*args):
        return subprocess.run([compose, *project, *args], capture_output=True, text=True, env=env, timeout=600)

    up = run("up", "-d", "--no-build")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        name = run("ps", "-q").stdout.split()[0]
        _wait_ready(name, f"{gateway}/ready")
        assert _get(f"{gateway}/v1/embeddings", {"content-type": "application/json",
                                                 "authorization": f"Bearer {KEY}"}, 30, b'{"input": "a"}')[0] == 200
        assert run("stop").returncode == 0
        assert _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        run("down", "-v")
