"""The GPU targets, checked as far as a CPU machine allows: the `tensorrt` configs, the TensorRT
step's decisions and parity gate (with fakes: no TensorRT anywhere), the GPU check's dry run, and
what the GPU bundle carries. The `cuda` target itself is served and checked in test_server.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import REPO_ROOT
from jina_triton_build.tensorrt import plan_profiles, read_profiles
from jina_triton_client.contract import TASKS
from jina_triton_pipeline.internals import encoder_name
from jina_triton_pipeline.parity import ParityCheck


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_tensorrt_configs_sit_beside_the_cuda_targets(tensorrt_repository):
    manifest = json.loads((tensorrt_repository / "manifest.json").read_text())
    assert manifest["target"] == "tensorrt" and manifest["tensorrt_run"] is False and manifest["precision"] == "fp16"
    for task in TASKS:
        folder = tensorrt_repository / encoder_name(task)
        default, plan = parse(folder / "config.pbtxt"), parse(folder / "configs" / "tensorrt.pbtxt")
        assert default.backend == "python" and plan.platform == "tensorrt_plan"
        assert [o.name for o in plan.output] == ["pooled_state"] and list(plan.output[0].dims) == [768]
        assert list(plan.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
        profiles = read_profiles(folder / "trt_profiles.json")
        assert list(plan.instance_group[0].profile) == [str(i) for i in range(len(profiles))]
        assert (folder / "1" / "model.onnx").is_file() and (folder / "1" / "parity.npz").is_file()
        steps = parse(tensorrt_repository / f"embed_{task.replace('-', '_')}" / "configs" / "tensorrt.pbtxt")
        assert "encode_us" not in dict(steps.ensemble_scheduling.step[1].output_map)  # a plan reports no time
    bucketed = parse(tensorrt_repository / "preprocess" / "configs" / "tensorrt.pbtxt")
    assert bucketed.parameters["length_buckets"].string_value == "16,32,64,128,256,512"
    assert parse(tensorrt_repository / "preprocess" / "config.pbtxt").parameters["length_buckets"].string_value == ""


def test_tensorrt_profiles_cover_the_buckets():
    profiles = plan_profiles((16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192), 64)
    assert profiles[0].min_length == 1 and profiles[-1].max_length == 8192
    for before, after in zip(profiles, profiles[1:]):
        assert after.min_length == before.max_length + 1
    for p in profiles:
        assert p.min_length <= p.opt_length <= p.max_length and 1 <= p.opt_batch <= p.max_batch <= 64
        assert p.max_batch * p.max_length <= 65536


# -- the TensorRT step, with fakes ------------------------------------------------------
def _reference_answers(encoder_dir, noise=0.0):
    check = ParityCheck.load(encoder_dir / "1" / "parity.npz")
    return check.reference + noise * np.random.default_rng(0).normal(size=check.reference.shape).astype(np.float32)


def _fakes(repository, noise=0.0, fail=False):
    built = []

    def build(onnx, plan, profiles):
        assert onnx.is_file() and profiles.is_file()
        if fail:
            raise RuntimeError("unsupported operator")
        built.append(onnx.parent.parent.name)
        plan.write_text(onnx.parent.parent.name)

    def run(plan, ids, mask):  # a plan that answers what its encoder's reference did (plus noise)
        return _reference_answers(repository / plan.read_text(), noise)

    return built, build, run


def test_plans_are_built_cached_gated_and_reused(tensorrt_repository, tmp_path):
    from jina_triton_serving.container import cache_key, choose_engine

    built, build, run = _fakes(tensorrt_repository)
    first = choose_engine(tensorrt_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32, build, run)
    assert first.engine == "tensorrt" and sorted(built) == sorted(encoder_name(t) for t in TASKS)
    assert min(first.cosines.values()) >= 0.9999 and first.triton_arguments() == ["--model-config-name=tensorrt"]
    assert (tensorrt_repository / "encoder_retrieval" / "1" / "model.plan").is_file()
    key = cache_key("NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32)
    assert key == "NVIDIA-H100-80GB-HBM3-trt10.8.0-abababababababab"
    again = choose_engine(tensorrt_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32, build, run)
    assert again.engine == "tensorrt" and len(built) == len(TASKS)  # reused, not rebuilt


def test_a_plan_below_its_parity_gate_never_serves(tensorrt_repository, tmp_path):
    from jina_triton_serving.container import choose_engine

    _, build, run = _fakes(tensorrt_repository, noise=0.05)  # fp16 overflow, a wrong optimization...
    decision = choose_engine(tensorrt_repository, tmp_path, "NVIDIA L4", "10.8.0", "cd" * 32, build, run)
    assert decision.engine == "cuda" and "parity gate failed" in decision.reason and "0.9999" in decision.reason
    assert decision.triton_arguments() == []


def test_no_tensorrt_or_no_gpu_falls_back(tensorrt_repository, tmp_path):
    from jina_triton_serving.container import choose_engine

    _, build, run = _fakes(tensorrt_repository, fail=True)
    assert choose_engine(tensorrt_repository, tmp_path, "NVIDIA A10", "10.8.0", "ef" * 32, build, run).engine == "cuda"
    assert choose_engine(tensorrt_repository, tmp_path, "NVIDIA A10", None, "ef" * 32, build, run).engine == "cuda"
    assert choose_engine(tensorrt_repository, tmp_path, None, "10.8.0", "ef" * 32, build, run).engine == "none"


# -- the GPU check -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.server
def test_the_gpu_checks_dry_run(tmp_path):
    """`jina-triton gpu-check --cpu`: the same steps on the tiny replica, PyTorch fp32 on this CPU."""
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "gpu-check", "--cpu", "--out",
                             str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--seconds", "2",
                             "--texts", "32"], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failures"] == [] and len(report["parity"]) == 4 * 2 * 3
    assert report["parity_min_float_cosine"] >= 0.99999
    for row in report["parity"]:
        assert set(row) >= {"float", "int8", "uint8", "binary", "ubinary", "unnormalized"}
    assert report["engine"]["tokens_per_s"] > 0 and report["served"][0]["errors"] == 0
    assert "served/engine" in (tmp_path / "out" / "report.md").read_text()


def test_the_gpu_bundle_carries_the_server_its_libraries_and_the_312_stub():
    from jina_triton_serving.gpu_bundle import triton_files

    files = dict((name, path) for path, name in triton_files())
    assert "pytriton/tritonserver/bin/tritonserver" in files
    assert "pytriton/tritonserver/backends/python/triton_python_backend_stub" in files
    assert "3.12" in str(files["pytriton/tritonserver/backends/python/triton_python_backend_stub"])
    libraries = [name for name in files if name.startswith("nvidia_pytriton.libs/")]
    assert 20 <= len(libraries) <= 60, len(libraries)
    assert sum(path.stat().st_size for path in files.values()) < 400e6  # ~27 MB once xz-compressed
