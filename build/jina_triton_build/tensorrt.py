"""TensorRT plans for the `tensorrt` target: profiles from the length buckets, fp16 build,
and the parity gate a plan must pass before it serves.

NOT RUN: no machine of this project has TensorRT (the GPU machine has none either). The
code follows the TensorRT 10 Python API (OnnxParser, optimization profiles,
BuilderFlag.FP16) and runs only in the GPU image (jina_triton_build.tensorrt_step). The
profile plan and the gate's decision are plain Python and unit-tested here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from jina_triton_pipeline.internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
PROFILES_FILE = "trt_profiles.json"


@dataclass(frozen=True)
class Profile:
    min_length: int
    opt_length: int
    max_length: int
    opt_batch: int
    max_batch: int


def plan_profiles(buckets: tuple[int, ...], max_batch_size: int, token_budget: int = 65536) -> list[Profile]:
    """Short, medium and long ranges; batch ceilings keep batch x length under the budget."""
    lengths = sorted(buckets)
    ranges = [(1, 128), (129, 1024), (1025, lengths[-1])]
    profiles = []
    for low, high in ranges:
        inside = [b for b in lengths if low <= b <= high]
        if not inside:
            continue
        high = inside[-1]
        opt = inside[len(inside) // 2]
        max_batch = max(1, min(max_batch_size, token_budget // high))
        profiles.append(Profile(low, opt, high, max(1, min(max_batch, token_budget // (4 * opt))), max_batch))
    return profiles


def write_profiles(path: Path, profiles: list[Profile]) -> None:
    path.write_text(json.dumps([asdict(p) for p in profiles], indent=2))


def read_profiles(path: Path) -> list[Profile]:
    return [Profile(**entry) for entry in json.loads(path.read_text())]


def build_plan(onnx_path: Path, plan_path: Path, profiles: list[Profile], fp16: bool = True,
               workspace_gib: int = 8) -> None:  # pragma: no cover - needs a GPU and TensorRT
    """Parse the pooled ONNX graph and serialize a plan for the GPU this runs on."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for name in (INPUT_IDS, ATTENTION_MASK):
            optimization.set_shape(name, (1, profile.min_length), (profile.opt_batch, profile.opt_length),
                                   (profile.max_batch, profile.max_length))
        config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {onnx_path}")
    plan_path.write_bytes(bytes(serialized))


def run_plan(plan_path: Path, input_ids, attention_mask):  # pragma: no cover - needs a GPU and TensorRT
    """pooled_state of a serialized plan for one batch (numpy in, numpy out), through torch on CUDA."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    tensors = {INPUT_IDS: torch.from_numpy(input_ids).cuda(), ATTENTION_MASK: torch.from_numpy(attention_mask).cuda()}
    for name, tensor in tensors.items():
        context.set_input_shape(name, tuple(tensor.shape))
    output = torch.empty((input_ids.shape[0], engine.get_tensor_shape(POOLED_STATE)[-1]), device="cuda")
    for name, tensor in {**tensors, POOLED_STATE: output}.items():
        context.set_tensor_address(name, tensor.data_ptr())
    if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
        raise RuntimeError(f"TensorRT could not run {plan_path}")
    torch.cuda.synchronize()
    return output.float().cpu().numpy()
