"""GPU targets, checked as far as a CPU machine allows: configs, pooled graphs, entrypoint, images.

Nothing here runs a GPU, TensorRT or Docker: the configs are rendered and parsed, the
pooled graphs are verified on CPU onnxruntime, the entrypoint's engine choice runs with
fakes, and the Dockerfiles and compose file go through hadolint and the compose schema.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import REPO_ROOT
from fake_triton import Request, load_model, texts
from jina_triton_build.tensorrt import plan_profiles, read_profiles
from jina_triton_client.contract import TASKS, encoder_name

DOCKER = REPO_ROOT / "docker"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines):
    from jina_triton_build.repository import RepositoryOptions, build_repository

    out = tmp_path_factory.mktemp("gpu") / "repo"
    build_repository(tiny_checkpoint, out, RepositoryOptions(target="tensorrt", max_length=512),
                     cache_dir=engine_cache)
    return out


def parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_gpu_configs_render_and_parse(gpu_repository):
    manifest = json.loads((gpu_repository / "manifest.json").read_text())
    assert manifest["target"] == "tensorrt" and manifest["gpu_paths_run"] is False
    for task in TASKS:
        folder = gpu_repository / encoder_name(task)
        onnx, trt = parse(folder / "config.pbtxt"), parse(folder / "configs" / "tensorrt.pbtxt")
        assert onnx.platform == "onnxruntime_onnx" and trt.platform == "tensorrt_plan"
        for config in (onnx, trt):
            assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
            assert [o.name for o in config.output] == ["pooled_state"] and list(config.output[0].dims) == [768]
            assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
        profiles = read_profiles(folder / "trt_profiles.json")
        assert list(trt.instance_group[0].profile) == [str(i) for i in range(len(profiles))]
        assert (folder / "1" / "model.onnx").is_file() and not (folder / "1" / "model.py").exists()
        assert manifest["engines"][task]["pooled"]["min_cosine"] >= 0.99999
    preprocess = parse(gpu_repository / "preprocess" / "config.pbtxt")
    assert preprocess.parameters["length_buckets"].string_value == "16,32,64,128,256,512"
    steps = parse(gpu_repository / "embed_retrieval" / "config.pbtxt").ensemble_scheduling.step
    assert dict(steps[1].output_map) == {"pooled_state": "_encoder_output"}
    assert dict(steps[2].input_map)["pooled_state"] == "_encoder_output"


def test_onnx_gpu_target_has_no_tensorrt_config(tmp_path, tiny_checkpoint, engine_cache, gpu_repository):
    from jina_triton_build.repository import RepositoryOptions, build_repository

    build_repository(tiny_checkpoint, tmp_path, RepositoryOptions(target="onnx-gpu"), cache_dir=engine_cache)
    assert not list(tmp_path.glob("*/configs/tensorrt.pbtxt"))
    assert parse(tmp_path / "encoder_retrieval" / "config.pbtxt").platform == "onnxruntime_onnx"


def test_gpu_targets_refuse_int8(tiny_checkpoint):
    from jina_triton_build.repository import RepositoryOptions

    with pytest.raises(ValueError, match="GPU targets take the fp32 graph"):
        RepositoryOptions(target="tensorrt", precision="int8").check(tiny_checkpoint)


def test_bucketed_preprocess_and_pooled_postprocess_match_the_cpu_path(gpu_repository, tiny_repository, reference):
    """The GPU data path on CPU: bucket padding + pooled graph + postprocess == reference."""
    from jina_triton_build.engines import ort_session

    preprocess = load_model(gpu_repository / "preprocess")
    batch = preprocess.execute([Request({"text": texts("a short one", "a longer text " * 5)})])[0].outputs
    assert batch["input_ids"].shape[1] == 32  # the next bucket up, not the longest row
    session = ort_session(gpu_repository / "encoder_retrieval" / "1" / "model.onnx")
    pooled = session.run(["pooled_state"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    postprocess = load_model(gpu_repository / "postprocess")
    got = postprocess.execute([Request({"pooled_state": pooled, "token_count": batch["token_count"]},
                                       {"dimensions": 256})])[0].outputs["embeddings"]
    want = reference.encode(["a short one", "a longer text " * 5], "retrieval", dimensions=256)
    assert np.sum(got * want, axis=1).min() >= 0.99999


def test_tensorrt_profiles_cover_the_buckets():
    buckets = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    profiles = plan_profiles(buckets, 64)
    assert profiles[0].min_length == 1 and profiles[-1].max_length == 8192
    for before, after in zip(profiles, profiles[1:]):
        assert after.min_length == before.max_length + 1
    for p in profiles:
        assert p.min_length <= p.opt_length <= p.max_length and 1 <= p.opt_batch <= p.max_batch <= 64
        assert p.max_batch * p.max_length <= 65536


# -- the GPU image's entrypoint -----------------------------------------------------
def _entrypoint():
    spec = importlib.util.spec_from_file_location("entrypoint", DOCKER / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["entrypoint"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_entrypoint_builds_caches_and_reuses_plans(gpu_repository, tmp_path):
    entry = _entrypoint()
    built = []

    def fake_build(onnx, plan, profiles):
        assert onnx.is_file() and profiles.is_file()
        built.append(onnx.parent.parent.name)
        plan.write_bytes(b"plan")

    first = entry.choose_engine(gpu_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.5.0", "ab" * 32, fake_build)
    assert first.engine == "tensorrt" and sorted(built) == sorted(encoder_name(t) for t in TASKS)
    assert (gpu_repository / "encoder_retrieval" / "1" / "model.plan").read_bytes() == b"plan"
    key = entry.cache_key("NVIDIA H100 80GB HBM3", "10.5.0", "ab" * 32)
    assert key == "NVIDIA-H100-80GB-HBM3-trt10.5.0-abababababababab"
    assert (tmp_path / "plans" / key / "encoder_retrieval.plan").is_file()
    again = entry.choose_engine(gpu_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.5.0", "ab" * 32, fake_build)
    assert again.engine == "tensorrt" and len(built) == len(TASKS)  # reused, not rebuilt
    other_gpu = entry.choose_engine(gpu_repository, tmp_path, "NVIDIA L4", "10.5.0", "ab" * 32, fake_build)
    assert other_gpu.engine == "tensorrt" and len(built) == 2 * len(TASKS)
    command = entry.triton_command(again, gpu_repository, [])
    assert "--model-config-name=tensorrt" in command


def test_entrypoint_falls_back_to_onnx_gpu(gpu_repository, tmp_path):
    entry = _entrypoint()

    def failing_build(onnx, plan, profiles):
        raise RuntimeError("unsupported operator")

    decision = entry.choose_engine(gpu_repository, tmp_path, "NVIDIA A10", "10.5.0", "cd" * 32, failing_build)
    assert decision.engine == "onnx-gpu" and "unsupported operator" in decision.reason
    assert "--model-config-name=tensorrt" not in entry.triton_command(decision, gpu_repository, [])
    assert entry.choose_engine(gpu_repository, tmp_path, "NVIDIA A10", None, "cd" * 32, failing_build).engine == "onnx-gpu"
    assert entry.choose_engine(gpu_repository, tmp_path, None, "10.5.0", "cd" * 32, failing_build).engine == "none"


# -- images, compose, monitoring ------------------------------------------------------
@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning", str(DOCKER / dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(DOCKER / "compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_config_points_at_triton_metrics():
    import yaml

    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["triton:8002"]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"triton", "prometheus", "grafana"} <= set(compose["services"])


@pytest.mark.server
def test_dashboard_queries_name_metrics_that_triton_exports(triton):
    import re
    import urllib.request

    from jina_triton_client import EmbeddingClient

    EmbeddingClient(triton.grpc_url).embed(["fill the counters"], task="retrieval")
    with urllib.request.urlopen(f"http://{triton.host}:{triton.metrics_port}/metrics", timeout=10) as reply:
        exported = {line.split("{")[0].split(" ")[0] for line in reply.read().decode().splitlines()
                    if line and not line.startswith("#")}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "triton.json").read_text())
    for panel in dashboard["panels"]:
        for name in re.findall(r"\b(nv_\w+|jina_\w+)", panel["targets"][0]["expr"]):
            if not name.startswith("nv_gpu_"):  # GPU metrics need a GPU
                assert name in exported, (panel["title"], name)
