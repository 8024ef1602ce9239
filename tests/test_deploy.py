"""What MLOps platforms deploy, checked without a Docker engine or a cluster: the built wheels install
and serve, each image's requirements exist for its Python, the Dockerfiles lint and copy what exists,
the Kubernetes and KServe manifests render and validate, the interpreter picker picks right."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, free_port, linked_copy

DOCKER = REPO_ROOT / "docker"
KUBERNETES = DOCKER / "kubernetes"
BIN = Path(sys.executable).parent
# image -> its requirements, its Python, its glibc (Ubuntu 24.04: 2.39; Debian 12: 2.36)
IMAGES = {"Dockerfile.gpu": ("requirements-gpu.txt", "3.12", 39), "Dockerfile.cpu": ("requirements-cpu.txt", "3.11", 36)}


def _platforms(glibc: int) -> list[str]:
    """pip matches --platform exactly: every manylinux tag the image's glibc runs."""
    return [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 4, -1)] + ["manylinux2014_x86_64",
                                                                              "manylinux2010_x86_64",
                                                                              "manylinux1_x86_64"]


# -- the wheels, installed as users install them --------------------------------------
@pytest.mark.slow
@pytest.mark.server
def test_the_built_wheels_install_into_a_fresh_venv_and_build_and_serve(tmp_path, tiny_checkpoint_dir, engine_cache,
                                                                        fp32_engines):
    """Non-editable: the templates and model.py files must ship inside the wheel."""
    wheels = tmp_path / "wheels"
    for source in (REPO_ROOT / "client", REPO_ROOT):
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                "-w", str(wheels), str(source)], capture_output=True, text=True, cwd=tmp_path)
        assert built.returncode == 0, built.stderr[-2000:]
    assert sorted(p.name for p in (REPO_ROOT / "build").iterdir() if p.name != "__pycache__") == ["jina_triton_build"], \
        "setuptools wrote its scratch files into the source folder build/"
    project = next(wheels.glob("jina_triton-*.whl"))
    import zipfile

    names = zipfile.ZipFile(project).namelist()
    assert "jina_triton_models/encoder_torch/config.pbtxt.tmpl" in names
    assert "jina_triton_models/preprocess/1/model.py" in names
    assert "jina_triton_serving/gateway/docs/docs.js" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for step in (["numpy<2", "torch==2.13.0"], [str(next(wheels.glob("jina_triton_client-*.whl"))),
                                                f"{project}[build,serve]"]):
        installed = subprocess.run(pip + step, capture_output=True, text=True)
        assert installed.returncode == 0, installed.stderr[-3000:]
    cli = str(venv / "bin" / "jina-triton")
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "JINA_TRITON_CACHE": str(tmp_path / "cache")}
    repository = tmp_path / "repository"
    build = subprocess.run([cli, "build", "--checkpoint", str(tiny_checkpoint_dir), "--out", str(repository),
                            "--cache-dir", str(engine_cache), "--max-length", "64", "--token-budget", "512",
                            "--max-request-tokens", "4096"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (repository / "preprocess" / "1" / "jina_triton_pipeline" / "steps.py").is_file()  # copied from the wheel
    ports = [str(free_port()) for _ in range(4)]
    serve = subprocess.Popen([cli, "serve", "--repository", str(repository), "--http-port", ports[0], "--grpc-port",
                              ports[1], "--metrics-port", ports[2], "--gateway-port", ports[3]],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if "INFO try: " in line or serve.poll() is not None:
                break
        assert any("INFO try: " in line for line in lines), "".join(lines[-40:])
        code = (f"from jina_triton_client import EmbeddingClient\n"
                f"print(EmbeddingClient('127.0.0.1:{ports[1]}').embed(['from the wheels'], dimensions=64).shape)")
        embedded = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                                  env=env, timeout=120, cwd=tmp_path)
        assert embedded.stdout.strip() == "(1, 64)", embedded.stderr[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/docs/docs.js", timeout=30) as reply:
            assert reply.status == 200  # the docs page's assets ship in the wheel
    finally:
        serve.terminate()
        serve.wait(90)


# -- the images ---------------------------------------------------------------------
def _pins(requirements: Path) -> list[tuple[str, str]]:
    pins = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)", line).groups()
            pins.append((name, version))
    return pins


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_every_pinned_requirement_exists_for_the_images_python(dockerfile):
    """`pip index versions` with the image's Python and platform: the check that would have caught
    transformers 5.24 / onnxruntime 1.32 having no distribution for the old base's Python 3.10."""
    requirements, python, glibc = IMAGES[dockerfile]
    missing = []
    for name, version in _pins(DOCKER / requirements):
        command = [sys.executable, "-m", "pip", "index", "versions", name, "--python-version", python,
                   "--only-binary=:all:", "--implementation", "cp", *[f"--platform={p}" for p in _platforms(glibc)]]
        listed = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        versions = re.search(r"Available versions: (.*)", listed.stdout)
        if not versions or version not in [v.strip() for v in versions.group(1).split(",")]:
            missing.append(f"{name}=={version}")
    assert not missing, f"no distribution for Python {python} on manylinux x86_64: {missing}"


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_dockerfiles_lint_and_copy_what_exists(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning", str(DOCKER / dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DOCKER / dockerfile).read_text()
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.MULTILINE):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), f"{dockerfile} copies {path}, which does not exist"
    assert f"docker/{IMAGES[dockerfile][0]}" in text


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_the_images_entrypoint_is_a_valid_command(dockerfile):
    """ENTRYPOINT + CMD parse as `jina-triton` arguments, bind the gateway outside the container, keep
    Triton on loopback, and the image runs unprivileged."""
    from jina_triton_serving.cli import parser

    text = (DOCKER / dockerfile).read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    assert entrypoint[0] == "jina-triton"
    args = parser().parse_args(entrypoint[1:] + command)
    assert args.command == "up" and args.gateway_host == "0.0.0.0" and args.host == "127.0.0.1"
    assert re.search(r"^USER (1000|triton-server)$", text, re.MULTILINE)


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml"])
def test_compose_file_matches_the_compose_spec(name):
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(DOCKER / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DOCKER / name).read_text())
    triton = compose["services"]["triton"]
    assert triton["shm_size"] and "JINA_TRITON_API_KEY" in triton["environment"]
    if name == "compose.cpu.yaml":
        return
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"] for job in prometheus["scrape_configs"]} == {"triton", "gateway"}


# -- Kubernetes and KServe ----------------------------------------------------------------
def _rendered(overlay: str) -> list[dict]:
    result = subprocess.run([str(BIN / "kubectl"), "kustomize", str(KUBERNETES / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_render_and_validate_against_the_kubernetes_schema(overlay, tmp_path):
    documents = _rendered(overlay)
    kinds = {doc["kind"] for doc in documents}
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap",
                     "PersistentVolumeClaim"}
    for index, doc in enumerate(documents):
        path = tmp_path / f"{index}.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (doc["kind"], result.stdout + result.stderr)
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {v["name"] for v in pod["volumes"]} >= {"keys", "dshm"}
    assert pod["volumes"][-1]["emptyDir"]["medium"] == "Memory"
    assert not any("key" in arg and "=" in arg for arg in server["command"])  # keys from the Secret's files
    assert pod["initContainers"][0]["command"][-1] == ("cuda" if overlay == "gpu" else "cpu")
    gpus = server["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")
    hpa = next(doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "avg_time_queue_us"
    rules = next(doc for doc in documents if doc["kind"] == "ConfigMap")["data"]["config.yaml"]
    assert "avg_time_queue_us" in yaml.safe_load(rules)["rules"][0]["name"]["as"]


def _strict(schema):
    """CRD schemas allow unknown fields; a typo should fail instead (preserve-unknown nodes excepted)."""
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@pytest.mark.parametrize("manifest, schema, field", [
    ("inferenceservice.yaml", "kserve-inferenceservice-v1beta1", "storageUri"),
    ("inferenceservice-stock.yaml", "kserve-inferenceservice-v1beta1", "protocolVersion"),
    ("servingruntime.yaml", "kserve-servingruntime-v1alpha1", "supportedModelFormats")])
def test_kserve_manifests_validate_against_kserves_crd_schemas(manifest, schema, field, tmp_path):
    loaded = json.loads(gzip.decompress((KUBERNETES / "schemas" / f"{schema}.json.gz").read_bytes()))
    strict = tmp_path / "schema.json"
    strict.write_text(json.dumps(_strict(loaded)))
    path = KUBERNETES / "kserve" / manifest
    result = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(strict), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yaml"
    assert field in path.read_text()
    broken.write_text(path.read_text().replace(field, field + "x"))
    result = subprocess.run([str(BIN / "check-jsonschema"), "--schemafile", str(strict), str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "the strict schema lets a typo through"


# -- the interpreter `make venv` builds from ----------------------------------------------------
def test_the_picker_takes_the_python_whose_libpython_the_stub_loads():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pick_python", REPO_ROOT / "tools" / "pick-python.py")
    picker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(picker)
    picked = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "pick-python.py")], capture_output=True,
                            text=True, timeout=120)
    assert picked.returncode == 0, picked.stderr
    assert Path(picked.stdout.strip()).resolve() == Path(sys.base_prefix, "bin", "python3.11").resolve()
    loader = picker.loader_paths()
    for candidate in picker.candidates():
        if Path(candidate).resolve() != Path(picked.stdout.strip()).resolve():
            assert picker.why_not(candidate, loader)  # every other one is refused, with its reason
    # this machine kind's trap (a pyenv Python whose libpython the loader does not find), whether or
    # not this host has one: the loader pointing elsewhere than the interpreter's own library
    info = json.loads(subprocess.run([sys.executable, "-c", picker.PROBE], capture_output=True, text=True).stdout)
    elsewhere = {info["INSTSONAME"]: [f"/opt/elsewhere/{info['INSTSONAME']}"]}
    assert "not at its own" in picker.why_not(sys.base_prefix + "/bin/python3.11", elsewhere)


# -- closed by default, in what platforms run ------------------------------------------------
def test_the_kserve_runtime_puts_the_gateway_in_front_of_a_locked_triton():
    """Not bare tritonserver on 0.0.0.0 (no key, open admin APIs): `jina-triton serve`, whose Triton
    stays on loopback with its admin APIs locked, behind the gateway and its keys."""
    runtime = yaml.safe_load((KUBERNETES / "kserve" / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    argv = container["command"] + container["args"]
    assert argv[:2] == ["jina-triton", "serve"] and "tritonserver" not in argv
    from jina_triton_serving.cli import parser

    args = parser().parse_args(argv[1:])
    assert args.api_key_file and args.gateway_host == "0.0.0.0" and args.host == args.http_host == "127.0.0.1"
    assert not args.allow_anonymous and not args.allow_insecure_http
    assert [port["containerPort"] for port in container["ports"]] == [args.gateway_port]
    assert not runtime["spec"].get("hostIPC")


def test_the_stock_kserve_runtime_locks_the_admin_apis_and_sizes_shm():
    """KServe's own Triton runtime: its predictor names no runtime of ours, locks what `serve` locks
    (with a key from a Secret) and gives the stubs a memory-backed /dev/shm."""
    from jina_triton_serving.triton_process import ADMIN_APIS, ADMIN_KEY_HEADER

    service = yaml.safe_load((KUBERNETES / "kserve" / "inferenceservice-stock.yaml").read_text())
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert "runtime" not in model and model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    locked = ",".join(ADMIN_APIS) + f":{ADMIN_KEY_HEADER}=$(ADMIN_KEY)"
    assert model["args"] == [f"--grpc-restricted-protocol={locked}", f"--http-restricted-api={locked}"]
    assert model["env"][0]["name"] == "ADMIN_KEY" and "secretKeyRef" in model["env"][0]["valueFrom"]
    shm = next(volume for volume in predictor["volumes"] if volume["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in model["volumeMounts"]


def test_the_gpu_image_is_built_on_a_triton_past_the_august_2025_security_release():
    text = (DOCKER / "Dockerfile.gpu").read_text()
    base = re.search(r"^ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:(\d+)\.(\d+)-py3$", text, re.MULTILINE)
    assert base and (int(base.group(1)), int(base.group(2))) >= (25, 7), "Triton 25.07 fixed CVE-2025-23319/23310"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)


def test_compose_publishes_only_the_gateway_and_grafana_has_no_open_door():
    for compose in ("compose.yaml", "compose.cpu.yaml"):
        for name, service in yaml.safe_load((DOCKER / compose).read_text())["services"].items():
            for port in service.get("ports", []):
                published = str(port)
                assert published.startswith("127.0.0.1:") or published.endswith(":8080"), (compose, name, published)
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")


def test_no_container_of_the_pod_sees_the_servers_processes():
    for overlay in ("cpu", "gpu"):
        pod = next(doc for doc in _rendered(overlay) if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
        assert pod["shareProcessNamespace"] is False and pod["hostPID"] is False and pod["hostIPC"] is False


@pytest.fixture
def read_only_copy(tiny_repository, tmp_path):
    """A built repository on a read-only mount, as the Deployment mounts /models."""
    source, mounted = tmp_path / "source", tmp_path / "models"
    linked_copy(tiny_repository, source)
    mounted.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no read-only bind mount here (needs root or CAP_SYS_ADMIN): {exc}")
    try:
        with pytest.raises(OSError):
            (mounted / "probe").write_text("x")
        yield mounted
    finally:
        subprocess.run(["umount", "-l", str(mounted)], capture_output=True)


@pytest.mark.server
def test_the_deployments_server_command_serves_a_read_only_repository(read_only_copy, tmp_path):
    """The server container's command as the Deployment has it, paths mapped to this machine."""
    import signal
    import time
    import urllib.request

    deployment = yaml.safe_load((KUBERNETES / "base" / "deployment.yaml").read_text())
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    (tmp_path / "api-keys").write_text("deploy-test-key\n")
    (tmp_path / "admin-key").write_text("deploy-admin-key\n")
    mapping = {"/models/repository": str(read_only_copy), "/keys/api-keys": str(tmp_path / "api-keys"),
               "/keys/admin-key": str(tmp_path / "admin-key")}
    gateway = free_port()
    argv = [str(BIN / command[0])] + [mapping.get(arg, arg) for arg in command[1:]] + [
        "--gateway-port", str(gateway), "--grpc-port", str(free_port()), "--http-port", str(free_port()),
        "--metrics-port", str(free_port())]
    log = tmp_path / "serve.log"
    process = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               env={k: v for k, v in os.environ.items() if not k.startswith("JINA_TRITON_")})
    try:
        deadline, status = time.monotonic() + 240, None
        while time.monotonic() < deadline and process.poll() is None and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/ready", timeout=5) as reply:
                    status = reply.status
            except OSError:
                time.sleep(1)
        assert status == 200, log.read_text()[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{gateway}/v1/embeddings", method="POST",
                                         data=json.dumps({"input": "read-only", "dimensions": 32}).encode(),
                                         headers={"Authorization": "Bearer deploy-test-key",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert len(json.loads(reply.read())["data"][0]["embedding"]) == 32
        assert "Traceback" not in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, log.read_text()[-3000:]
