"""Entrypoint of the GPU image: build the repository, choose TensorRT or ONNX-GPU, start Triton.

1. Build the model repository (target `tensorrt`) from the mounted checkpoint unless
   the cache already holds one for the same checkpoint.
2. For the GPU found, look for TensorRT plans in the cache under
   <gpu model>-trt<TensorRT version>-<checkpoint hash>; build them when missing.
3. Plans ready: start Triton with --model-config-name=tensorrt. No TensorRT, or a
   plan that fails to build: the repository's default configs (onnxruntime on CUDA)
   serve instead, as NVIDIA NIM falls back to its ONNX engines.

NOT RUN on this project's machines (no GPU, no Docker); the engine-selection logic
below is unit-tested with fakes (tests/test_gpu_targets.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TENSORRT_CONFIG = "tensorrt"


@dataclass
class Decision:
    engine: str                  # "tensorrt" | "onnx-gpu" | "none"
    reason: str
    plans: dict = field(default_factory=dict)


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


def choose_engine(repository: Path, cache: Path, gpu: str | None, trt_version: str | None,
                  fingerprint: str, build_plan: Callable[[Path, Path, Path], None]) -> Decision:
    """Link cached or freshly built plans into the repository, or decide to fall back."""
    if gpu is None:
        return Decision("none", "no GPU is visible (nvidia-smi found none): run the CPU image instead")
    if trt_version is None:
        return Decision("onnx-gpu", "the TensorRT Python API is not installed")
    encoders = sorted(p.parent.parent for p in repository.glob(f"*/configs/{TENSORRT_CONFIG}.pbtxt"))
    if not encoders:
        return Decision("onnx-gpu", "the repository has no TensorRT configs (built for onnx-gpu)")
    folder = cache / "plans" / cache_key(gpu, trt_version, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    plans = {}
    for encoder in encoders:
        plan = folder / f"{encoder.name}.plan"
        if not plan.is_file():
            partial = plan.with_suffix(".partial")
            try:
                build_plan(encoder / "1" / "model.onnx", partial, encoder / "trt_profiles.json")
            except Exception as exc:  # noqa: BLE001 - any failure means: serve the ONNX engines
                partial.unlink(missing_ok=True)
                return Decision("onnx-gpu", f"TensorRT could not build {encoder.name}: {exc}")
            partial.replace(plan)
        target = encoder / "1" / "model.plan"
        target.unlink(missing_ok=True)
        shutil.copyfile(plan, target)
        plans[encoder.name] = str(plan)
    return Decision("tensorrt", f"plans for {gpu}, TensorRT {trt_version} in {folder}", plans)


def triton_command(decision: Decision, repository: Path, security_args: list[str], host: str = "0.0.0.0") -> list[str]:
    command = ["tritonserver", f"--model-repository={repository}", f"--http-address={host}",
               f"--grpc-address={host}", f"--metrics-address={host}", "--allow-gpu-metrics=true",
               "--strict-readiness=true", "--exit-on-error=true", *security_args]
    if decision.engine == "tensorrt":
        command.append(f"--model-config-name={TENSORRT_CONFIG}")
    return command


def _build_plan(onnx_path: Path, plan_path: Path, profiles_file: Path) -> None:  # pragma: no cover - GPU only
    from jina_triton.tensorrt import build_plan, read_profiles

    build_plan(onnx_path, plan_path, read_profiles(profiles_file))


def _ensure_repository(checkpoint: str, repository: Path) -> str:  # pragma: no cover - container only
    from jina_triton.checkpoint import open_checkpoint
    from jina_triton.repository import RepositoryOptions, build_repository, read_manifest

    opened = open_checkpoint(checkpoint)
    try:
        if read_manifest(repository)["checkpoint"]["fingerprint"] == opened.fingerprint:
            return opened.fingerprint
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        pass
    build_repository(opened, repository, RepositoryOptions(target="tensorrt"), progress=print)
    return opened.fingerprint


def main(argv=None) -> int:  # pragma: no cover - container only
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="/checkpoint")
    parser.add_argument("--repository", default="/cache/repository")
    parser.add_argument("--cache", default=os.environ.get("JINA_TRITON_CACHE", "/cache"))
    args = parser.parse_args(argv)
    from jina_triton.serve import Security

    fingerprint = _ensure_repository(args.checkpoint, Path(args.repository))
    decision = choose_engine(Path(args.repository), Path(args.cache), gpu_name(), tensorrt_version(),
                             fingerprint, _build_plan)
    print(f"engine: {decision.engine} ({decision.reason})", flush=True)
    if decision.engine == "none":
        return 2
    security = Security(admin_key=os.environ.get("JINA_TRITON_ADMIN_KEY") or None,
                        api_key=os.environ.get("JINA_TRITON_API_KEY") or None)
    command = triton_command(decision, Path(args.repository), security.arguments())
    os.execvp(command[0], command)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
