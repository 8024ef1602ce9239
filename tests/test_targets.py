"""The GPU targets, checked as far as a CPU machine allows: the `tensorrt` configs, the TensorRT
step's decisions and parity gate (with fakes: no TensorRT anywhere), the cuda encoder's batching
across requests and its compiled shapes, what the GPU bundle carries. The `cuda` target itself is
served and checked in test_server.py; the GPU check's box emulation is test_gpu_check.py."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from jina_triton_build.tensorrt import plan_profiles, read_profiles
from jina_triton_client.contract import TASKS
from jina_triton_pipeline.internals import encoder_name


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


# -- the TensorRT step, with a stand-in for TensorRT ----------------------------------------
def _fakes(repository, noise=0.0, fail=False):
    """`build` and `run` without TensorRT: the "plan" runs the very ONNX graph it was built from on
    onnxruntime (plus noise, for a plan that went wrong), so the gate compares a real engine's
    answers on the verification batch with the reference's, never the reference with itself."""
    from jina_triton_build.engines import ort_session, run_session

    built, sessions = [], {}

    def build(onnx, plan, profiles):
        assert onnx.is_file() and profiles.is_file()
        if fail:
            raise RuntimeError("unsupported operator")
        built.append(onnx.parent.parent.name)
        plan.write_text(str(onnx))

    def run(plan, ids, mask):
        onnx = plan.read_text()
        sessions.setdefault(onnx, ort_session(Path(onnx)))
        pooled = run_session(sessions[onnx], ids, mask)
        return pooled + noise * np.random.default_rng(0).normal(size=pooled.shape).astype(np.float32)

    return built, build, run


def test_plans_are_built_cached_gated_and_reused(tensorrt_repository, tmp_path):
    from jina_triton_build.tensorrt_step import cache_key, choose_engine

    built, build, run = _fakes(tensorrt_repository)
    first = choose_engine(tensorrt_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32, build, run)
    assert first.engine == "tensorrt" and sorted(built) == sorted(encoder_name(t) for t in TASKS)
    assert min(first.cosines.values()) >= 0.99999 and first.triton_arguments() == ["--model-config-name=tensorrt"]
    assert max(first.cosines.values()) < 1.0  # an engine's answers, not the reference's own
    assert (tensorrt_repository / "encoder_retrieval" / "1" / "model.plan").is_file()
    key = cache_key("NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32)
    assert key == "NVIDIA-H100-80GB-HBM3-trt10.8.0-abababababababab"
    again = choose_engine(tensorrt_repository, tmp_path, "NVIDIA H100 80GB HBM3", "10.8.0", "ab" * 32, build, run)
    assert again.engine == "tensorrt" and len(built) == len(TASKS)  # reused, not rebuilt


def test_a_plan_below_its_parity_gate_never_serves(tensorrt_repository, tmp_path):
    from jina_triton_build.tensorrt_step import choose_engine

    _, build, run = _fakes(tensorrt_repository, noise=0.05)  # fp16 overflow, a wrong optimization...
    decision = choose_engine(tensorrt_repository, tmp_path, "NVIDIA L4", "10.8.0", "cd" * 32, build, run)
    assert decision.engine == "cuda" and "parity gate failed" in decision.reason and "0.9999" in decision.reason
    assert decision.triton_arguments() == []


def test_no_tensorrt_or_no_gpu_falls_back(tensorrt_repository, tmp_path):
    from jina_triton_build.tensorrt_step import choose_engine

    _, build, run = _fakes(tensorrt_repository, fail=True)
    assert choose_engine(tensorrt_repository, tmp_path, "NVIDIA A10", "10.8.0", "ef" * 32, build, run).engine == "cuda"
    assert choose_engine(tensorrt_repository, tmp_path, "NVIDIA A10", None, "ef" * 32, build, run).engine == "cuda"
    assert choose_engine(tensorrt_repository, tmp_path, None, "10.8.0", "ef" * 32, build, run).engine == "none"


# -- the GPU check -------------------------------------------------------------------------
def test_the_gpu_bundle_carries_the_server_its_libraries_and_the_312_stub():
    from jina_triton_tools.gpu_bundle import triton_files

    files = dict((name, path) for path, name in triton_files())
    assert "pytriton/tritonserver/bin/tritonserver" in files
    assert "pytriton/tritonserver/backends/python/triton_python_backend_stub" in files
    assert "3.12" in str(files["pytriton/tritonserver/backends/python/triton_python_backend_stub"])
    libraries = [name for name in files if name.startswith("nvidia_pytriton.libs/")]
    assert 20 <= len(libraries) <= 60, len(libraries)
    assert sum(path.stat().st_size for path in files.values()) < 400e6  # ~27 MB once xz-compressed


# -- the cuda encoder: batching across requests, compiled shapes -------------------------------
@pytest.mark.server
def test_requests_meet_in_one_cuda_encoder_execute(triton_cuda, cuda_repository):
    """The encoder's batch limit is its own (rows per execute, 1,024 on the cuda target), not the 64
    texts of one request: 64-text requests queued together reach one execute."""
    import tritonclient.grpc as grpcclient

    from jina_triton_client import EmbeddingClient

    assert parse(cuda_repository / "encoder_retrieval" / "config.pbtxt").max_batch_size == 1024
    texts = [f"text number {i} about batching" for i in range(64)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: EmbeddingClient(triton_cuda.grpc_url, timeout=120).embed(texts), range(12)))
    stats = grpcclient.InferenceServerClient(triton_cuda.grpc_url).get_inference_statistics(
        "encoder_retrieval", headers=triton_cuda.security.grpc_admin_headers(), as_json=True)["model_stats"][0]
    sizes = [int(entry["batch_size"]) for entry in stats["batch_stats"]]
    assert max(sizes) > 64, sizes


@pytest.mark.slow
def test_a_compiled_cuda_encoder_matches_eager_and_passes_its_gate(tmp_path, tiny_checkpoint, engine_cache, reference):
    """torch.compile over length buckets (a build option, off by default): the parity gate runs on the
    compiled path at load, and its answers equal the eager engine's."""
    import torch

    from conftest import build_test_repository
    from fake_triton import Request, load_model

    repository = build_test_repository(tiny_checkpoint, tmp_path / "repo", engine_cache, reference, target="cuda",
                                       encoder_instances=1, compile_buckets="32")
    assert 'string_value: "32"' in (repository / "encoder_retrieval" / "config.pbtxt").read_text()
    compiled = load_model(repository / "encoder_retrieval")  # warm-up, then the gate, compiled
    assert compiled.step.engine.compiled is not None
    from jina_triton_pipeline.torch_engine import TorchEngine

    eager = TorchEngine(repository / "encoder_retrieval" / "1", "fp32", "cpu", 2)
    ids = np.array([[5, 9, 17, 128001, 0], [7, 128001, 0, 0, 0]], np.int64)
    mask = (np.arange(5)[None, :] < np.array([[4], [2]])).astype(np.int64)
    response = compiled.execute([Request({"input_ids": ids, "attention_mask": mask})])[0]
    assert response.error is None
    want = eager.embed(torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(response.outputs["pooled_state"], want, atol=1e-5)


@pytest.mark.server
@pytest.mark.slow
def test_an_encoder_below_its_parity_gate_stays_unloaded_and_the_rest_serve(tmp_path, cuda_repository):
    """A corrupted adapter weight in a built repository: that encoder refuses to load (the log says
    why), its ensemble with it; the server comes up and serves the three other tasks."""
    from safetensors.torch import load_file, save_file

    from conftest import linked_copy
    from jina_triton_client import EmbeddingClient, EmbeddingError, RetryPolicy
    from jina_triton_serving.triton_process import TritonServer

    repository = tmp_path / "repository"
    linked_copy(cuda_repository, repository)
    adapter = repository / "encoder_clustering" / "1" / "adapter.safetensors"
    weights = load_file(str(adapter))
    first = next(key for key in sorted(weights) if ".lora_B." in key)
    weights[first] = weights[first] * 50  # one tensor of 168
    adapter.unlink()  # a hard link into the build cache: write a new file, not through the link
    save_file(weights, str(adapter))
    with TritonServer.on_free_ports(repository, log_file=tmp_path / "server.log") as server:
        assert set(server.failed) == {"encoder_clustering", "embed_clustering"}, server.failed
        log = (tmp_path / "server.log").read_text()
        assert "encoder_clustering: parity gate failed, minimum cosine" in log and "below 0.99999 (fp32)" in log
        with EmbeddingClient(server.grpc_url, retry=RetryPolicy(retries=0)) as client:
            for task in ("retrieval", "text-matching", "classification"):
                assert client.embed(["still served"], task=task).shape == (1, 768)
            with pytest.raises(EmbeddingError, match="UNAVAILABLE|NOT_FOUND"):
                client.embed(["not this one"], task="clustering")
