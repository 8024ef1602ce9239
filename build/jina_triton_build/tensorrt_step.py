"""The GPU image's TensorRT step: plans for the GPU found, cached, admitted only past the parity gate.

`jina-triton up --target tensorrt` (the GPU image's default) builds the repository (the `cuda`
target's PyTorch encoders as config.pbtxt, TensorRT configs beside them), then here:
1. for the GPU found, look for plans in the cache under <gpu model>-trt<TensorRT>-<checkpoint>;
   build the missing ones from the pooled ONNX graphs;
2. run each plan on its encoder's parity texts: below the fp16 gate it does not serve;
3. every plan passed: Triton starts with --model-config-name=tensorrt. No GPU, no TensorRT, a
   plan that fails to build or to pass the gate: the PyTorch encoders (config.pbtxt) serve, as
   NVIDIA NIM falls back to its non-TensorRT engines.

NOT RUN on this project's machines (no TensorRT anywhere, not even on the GPU machine); the
decision logic below is unit-tested with fakes (tests/test_targets.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from jina_triton_pipeline.parity import PARITY_FILE, ParityCheck, ParityError

TENSORRT_CONFIG = "tensorrt"
PLAN_PRECISION = "fp16"


@dataclass
class Decision:
    engine: str                  # "tensorrt" | "cuda" (the PyTorch encoders) | "none"
    reason: str
    plans: dict = field(default_factory=dict)
    cosines: dict = field(default_factory=dict)

    def triton_arguments(self) -> list[str]:
        return [f"--model-config-name={TENSORRT_CONFIG}"] if self.engine == "tensorrt" else []


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def cache_key(gpu: str, trt_version: str, fingerprint: str) -> str:
    """Plans are only valid for one GPU model, one TensorRT version and one checkpoint."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu}-trt{trt_version}").strip("-") + f"-{fingerprint[:16]}"


def choose_engine(repository: Path, cache: Path, gpu: str | None, trt_version: str | None, fingerprint: str,
                  build_plan: Callable[[Path, Path, Path], None],
                  run_plan: Callable[[Path, object, object], object]) -> Decision:
    """Link cached or freshly built plans that pass the gate into the repository, or decide to fall back."""
    if gpu is None:
        return Decision("none", "no GPU is visible (nvidia-smi found none): run the CPU image instead")
    if trt_version is None:
        return Decision("cuda", "the TensorRT Python API is not installed")
    encoders = sorted(p.parent.parent for p in repository.glob(f"encoder_*/configs/{TENSORRT_CONFIG}.pbtxt"))
    if not encoders:
        return Decision("cuda", "the repository has no TensorRT configs (built for the cuda target)")
    folder = cache / "plans" / cache_key(gpu, trt_version, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    decision = Decision("tensorrt", f"plans for {gpu}, TensorRT {trt_version} in {folder}")
    for encoder in encoders:
        plan = folder / f"{encoder.name}.plan"
        if not plan.is_file():
            partial = plan.with_suffix(".partial")
            try:
                build_plan(encoder / "1" / "model.onnx", partial, encoder / "trt_profiles.json")
            except Exception as exc:  # noqa: BLE001 - any failure means: serve the PyTorch encoders
                partial.unlink(missing_ok=True)
                return Decision("cuda", f"TensorRT could not build {encoder.name}: {exc}")
            partial.replace(plan)
        check = ParityCheck.load(encoder / "1" / PARITY_FILE)
        try:
            decision.cosines[encoder.name] = check.gate(run_plan(plan, check.input_ids, check.attention_mask),
                                                        PLAN_PRECISION, f"{encoder.name} TensorRT plan")
        except ParityError as exc:
            return Decision("cuda", str(exc))
        target = encoder / "1" / "model.plan"
        target.unlink(missing_ok=True)
        shutil.copyfile(plan, target)
        decision.plans[encoder.name] = str(plan)
    return decision


def build_plan_from_profiles(onnx_path: Path, plan_path: Path, profiles_file: Path) -> None:  # pragma: no cover
    from .tensorrt import build_plan, read_profiles

    build_plan(onnx_path, plan_path, read_profiles(profiles_file))


def prepare_tensorrt(repository: Path, cache: Path, fingerprint: str, log) -> Decision:  # pragma: no cover - GPU only
    from .tensorrt import run_plan

    decision = choose_engine(repository, cache, gpu_name(), tensorrt_version(), fingerprint,
                             build_plan_from_profiles, run_plan)
    log(f"engine: {decision.engine} ({decision.reason})")
    return decision
