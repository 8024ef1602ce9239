"""Write a servable Triton model repository from a checkpoint.

    REPO/preprocess/{config.pbtxt, 1/model.py, 1/tokenizer.json}
    REPO/encoder_<task>/{config.pbtxt, 1/model.py, 1/model.onnx}
    REPO/postprocess/{config.pbtxt, 1/model.py, 1/calibration.npz}
    REPO/embed_<task>/{config.pbtxt, 1/}
    REPO/manifest.json   which checkpoint, synthetic or not, precision, parity, limits

Targets:
    cpu       encoders are Python-backend models running onnxruntime (run and tested here)
    onnx-gpu  encoders use Triton's onnxruntime backend on CUDA, pooled fp32 graphs,
              preprocess pads to length buckets (NOT RUN: no GPU here)
    tensorrt  as onnx-gpu, plus configs/tensorrt.pbtxt for a plan built on first start
              (docker/entrypoint.py); onnx-gpu stays the fallback (NOT RUN: no GPU here)

Templates come from the project's `model_repository/` folder.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jina_triton_client.contract import (
    CONTRACT_VERSION, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TEXT_BYTES, LAST_HIDDEN_STATE, MIN_MAX_LENGTH, POOLED_STATE,
    POSTPROCESS_MODEL, PREPROCESS_MODEL, encoder_name, ensemble_name)

from .calibration import calibrate
from .checkpoint import Checkpoint
from .engines import build_engines, link_or_copy
from .render import render_file
from .tensorrt import DEFAULT_BUCKETS, PROFILES_FILE, plan_profiles, write_profiles

MANIFEST = "manifest.json"
TENSORRT_CONFIG = "tensorrt"  # configs/tensorrt.pbtxt, picked by --model-config-name=tensorrt


def templates_dir() -> Path:
    if os.environ.get("JINA_TRITON_TEMPLATES"):
        return Path(os.environ["JINA_TRITON_TEMPLATES"])
    import jina_triton_pipeline

    return Path(jina_triton_pipeline.__file__).resolve().parent.parent


TARGETS = ("cpu", "onnx-gpu", "tensorrt")
GPU_TARGETS = ("onnx-gpu", "tensorrt")


@dataclass(frozen=True)
class RepositoryOptions:
    target: str = "cpu"
    precision: str = "fp32"
    max_length: int = DEFAULT_MAX_LENGTH        # tokens per text, prefix and EOS included
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # texts per request
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    queue_delay_us: int = 2000                  # encoder dynamic-batching window
    preprocess_queue_delay_us: int = 500
    token_budget: int = 8192                    # padded tokens per encoder forward pass
    intra_op_threads: int = 2
    encoder_instances: int = 1
    preprocess_instances: int = 1
    postprocess_instances: int = 1
    gpu_instances: int = 1
    length_buckets: tuple = DEFAULT_BUCKETS      # GPU targets only

    @property
    def gpu(self) -> bool:
        return self.target in GPU_TARGETS

    def check(self, checkpoint: Checkpoint) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.gpu and self.precision != "fp32":
            raise ValueError("GPU targets take the fp32 graph (TensorRT builds fp16 from it); "
                             "int8 dynamic quantization is a CPU option")
        limit = int(checkpoint.config["max_position_embeddings"])
        if not MIN_MAX_LENGTH <= self.max_length <= limit:
            raise ValueError(f"max length must be from {MIN_MAX_LENGTH} to {limit}, not {self.max_length}")
        for name, value in asdict(self).items():
            if isinstance(value, int) and not isinstance(value, bool) and value < (0 if name.endswith("delay_us") else 1):
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.token_budget < self.max_length:
            raise ValueError(f"token_budget ({self.token_budget}) must be at least the max length "
                             f"({self.max_length}) so that the longest text fits in one pass")


def _render_model(name: str, template: str, out: Path, values: dict, config: str = "config.pbtxt.tmpl") -> Path:
    source = templates_dir() / template
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    render_file(source / config, folder / "config.pbtxt", {"model_name": name, **values}, allow_unused=True)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    if (source / "1" / "model.py").is_file() and config == "config.pbtxt.tmpl":
        shutil.copy2(source / "1" / "model.py", folder / "1" / "model.py")
    return folder / "1"


def _template_values(options: RepositoryOptions, checkpoint: Checkpoint) -> dict:
    buckets = tuple(b for b in options.length_buckets if b < options.max_length) + (options.max_length,)
    profiles = plan_profiles(buckets, options.max_batch_size) if options.target == "tensorrt" else []
    preferred = sorted({b for b in (4, 8, 16, 32, options.max_batch_size) if b <= options.max_batch_size})
    return {**asdict(options), "hidden_size": checkpoint.hidden_size,
            "preprocess_model": PREPROCESS_MODEL, "postprocess_model": POSTPROCESS_MODEL,
            "length_buckets": ",".join(map(str, buckets)) if options.gpu else "",
            "encoder_output": POOLED_STATE if options.gpu else LAST_HIDDEN_STATE,
            "preferred_batch_sizes": ", ".join(map(str, preferred)),
            "trt_profiles": ", ".join(f'"{i}"' for i in range(len(profiles))), "_profiles": profiles}


def _write_encoder(task: str, engines, out: Path, options: RepositoryOptions, values: dict) -> None:
    name = encoder_name(task)
    if not options.gpu:
        link_or_copy(engines.path(task), _render_model(name, "encoder", out, values) / "model.onnx")
        return
    version = _render_model(name, "encoder", out, values, "config.onnxruntime.pbtxt.tmpl")
    link_or_copy(engines.path(task, "pooled"), version / "model.onnx")
    if options.target == "tensorrt":
        render_file(templates_dir() / "encoder" / "config.tensorrt_plan.pbtxt.tmpl",
                    out / name / "configs" / f"{TENSORRT_CONFIG}.pbtxt", {"model_name": name, **values},
                    allow_unused=True)
        write_profiles(out / name / PROFILES_FILE, values["_profiles"])


def build_repository(checkpoint: Checkpoint, out: Path, options: RepositoryOptions | None = None,
                     cache_dir: Path | None = None, progress=None) -> dict:
    options = options or RepositoryOptions()
    options.check(checkpoint)
    engines = build_engines(checkpoint, options.precision, cache_dir, progress, pooled=options.gpu)
    calibration = calibrate(checkpoint, engines, progress)
    out.mkdir(parents=True, exist_ok=True)
    values = _template_values(options, checkpoint)

    version = _render_model(PREPROCESS_MODEL, "preprocess", out, values)
    shutil.copy2(checkpoint.path / "tokenizer.json", version / "tokenizer.json")
    version = _render_model(POSTPROCESS_MODEL, "postprocess", out, values)
    shutil.copy2(calibration, version / "calibration.npz")
    for task in checkpoint.tasks:
        _write_encoder(task, engines, out, options, values)
        _render_model(ensemble_name(task), "ensemble", out, {**values, "encoder_model": encoder_name(task)})

    manifest = {
        "contract_version": CONTRACT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": {"source": str(checkpoint.path), "fingerprint": checkpoint.fingerprint,
                       "synthetic": checkpoint.synthetic, "label": checkpoint.label},
        "target": options.target,
        "gpu_paths_run": False if options.gpu else None,  # no GPU in this project's CI
        "precision": options.precision,
        "hidden_size": checkpoint.hidden_size,
        "tasks": list(checkpoint.tasks),
        "options": asdict(options),
        "engines": {task: engines.report.get(task, {}) for task in checkpoint.tasks},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(repository: Path) -> dict:
    file = Path(repository) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{repository} has no {MANIFEST}: build it with `jina-triton build`")
    return json.loads(file.read_text())
