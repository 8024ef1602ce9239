"""Write a servable Triton model repository from a checkpoint.

    REPO/preprocess/{config.pbtxt, 1/model.py, 1/tokenizer.json}
    REPO/encoder_<task>/{config.pbtxt, 1/model.py, 1/<engine files>}   cpu: backbone*.onnx(.data), adapter.npz
    REPO/postprocess/{config.pbtxt, 1/model.py, 1/calibration.npz}
    REPO/embed_<task>/{config.pbtxt, 1/}
    REPO/manifest.json   which checkpoint, synthetic or not, target, precision, parity, limits
    REPO/requirements.txt   the third-party packages the Python models import, as built
    REPO/python_env.tar.gz  with --pack-env: those packages, for EXECUTION_ENV_PATH
Every Python model's version folder also holds the project's code it imports (self_contained.py):
a stock Triton serves the repository with nothing of this project installed.

Targets:
    cpu       encoders run onnxruntime on one pooled backbone graph shared by every task, each
              task's LoRA adapter bound as inputs (run and tested here)
    cuda      encoders run the merged encoder in PyTorch, half precision on a GPU, fp32 on
              a CPU; each refuses to load below its parity gate (tested here on the CPU)
    tensorrt  cuda, plus configs/tensorrt.pbtxt for plans built on first start and admitted
              past the same gate (NOT RUN: no TensorRT here)

REPO is a symbolic link to a complete snapshot (jina_triton_models.layout): a rebuild writes
a new snapshot beside it and swings the link, so a running server keeps every file it loaded.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from jina_triton_client.contract import CONTRACT_VERSION, ensemble_name
from jina_triton_models import templates_dir
from jina_triton_models.layout import MANIFEST, new_snapshot, publish
from jina_triton_pipeline.internals import POSTPROCESS_MODEL, PREPROCESS_MODEL, encoder_name
from jina_triton_pipeline.onnx_engine import ADAPTER_FILE as ONNX_ADAPTER_FILE
from jina_triton_pipeline.parity import PARITY_FILE
from jina_triton_pipeline.torch_engine import ADAPTER_FILE, BACKBONE_FILE, CONFIG_FILE

from .calibration import calibrate
from .checkpoint import ADAPTER_WEIGHTS, WEIGHTS_FILE, Checkpoint, adapter_config, architecture
from .engines import build_engines, cache_entry, task_graph, torch_pooled
from .options import PYTHON_MODELS, BuildOptions
from .render import render_file
from .self_contained import copy_project_code, execution_env, pack_environment, write_requirements
from .tensorrt import DEFAULT_BUCKETS, PROFILES_FILE, plan_profiles, write_profiles
from .verification import reference_parity

TENSORRT_CONFIG = "tensorrt"  # configs/tensorrt.pbtxt, picked by --model-config-name=tensorrt


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (engines are large), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _render(template: str, out: Path, name: str, values: dict, config: str = "config.pbtxt") -> Path:
    """The model folder `out/name` from model_repository/<template>; returns its version folder."""
    source = templates_dir() / template
    render_file(source / "config.pbtxt.tmpl", out / name / config, {"model_name": name, **values})
    version = out / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    if (source / "1" / "model.py").is_file() and config == "config.pbtxt":
        shutil.copy2(source / "1" / "model.py", version / "model.py")
        copy_project_code(version)
    if template == "ensemble":  # object storage keeps no empty folder, and Triton needs the version's
        (version / "ensemble.txt").write_text("An ensemble has no files; this one keeps its version folder "
                                              "on object storage (S3 has no empty folders).\n")
    return version


def _instance_kind() -> str:
    try:
        import torch
        return "KIND_GPU" if torch.cuda.is_available() else "KIND_CPU"
    except ImportError:
        return "KIND_CPU"


# -- the encoders of each target ---------------------------------------------------
def _onnx_encoders(checkpoint, tasks, out, engines, values):
    """Every task's folder holds the same backbone files, portable and pre-packed for this machine
    (hard links: one inode, so one copy in the page cache for every stub that maps it), and its
    own adapter."""
    shared = engines.files() + engines.prepacked
    for task in tasks:
        version = _render("encoder_onnx", out, encoder_name(task),
                          {**values("encoder_onnx"), "vocab_size": checkpoint.config["vocab_size"],
                           "graph": shared[0].name})
        for source in shared:
            link_or_copy(source, version / source.name)
        shared = [version / source.name for source in shared]  # copied across file systems: copy once
        link_or_copy(engines.adapter(task), version / ONNX_ADAPTER_FILE)


def encoder_config(checkpoint: Checkpoint, task: str) -> dict:
    """encoder.json of a task's encoder folder: the backbone's shape and the adapter's scaling."""
    adapter = adapter_config(checkpoint, task)
    return {**architecture(checkpoint), "lora_scaling": adapter["lora_alpha"] / adapter["r"], "task": task}


def _torch_encoders(checkpoint, tasks, out, parity, values):
    for task in tasks:
        version = _render("encoder_torch", out, encoder_name(task),
                          {**values("encoder_torch"), "instance_kind": _instance_kind()})
        link_or_copy(checkpoint.path / WEIGHTS_FILE, version / BACKBONE_FILE)
        link_or_copy(checkpoint.adapter_dir(task) / ADAPTER_WEIGHTS, version / ADAPTER_FILE)
        (version / CONFIG_FILE).write_text(json.dumps(encoder_config(checkpoint, task), indent=2))
        parity[task].save(version / PARITY_FILE)


def _tensorrt_configs(tasks, out, options, engines, values):
    """Beside the cuda target's configs: plans' configs, the pooled graphs and the profiles."""
    buckets = tuple(b for b in DEFAULT_BUCKETS if b < options.max_length) + (options.max_length,)
    profiles = plan_profiles(buckets, options.max_batch_size)
    preferred = sorted({b for b in (4, 8, 16, 32, options.max_batch_size) if b <= options.max_batch_size})
    bucketed = {**values("preprocess"), "length_buckets": ",".join(map(str, buckets))}
    _render("preprocess", out, PREPROCESS_MODEL, bucketed, f"configs/{TENSORRT_CONFIG}.pbtxt")
    for task in tasks:
        name = encoder_name(task)
        _render("encoder_tensorrt", out, name, {**values("encoder_tensorrt"),
                                                "preferred_batch_sizes": ", ".join(map(str, preferred)),
                                                "trt_profiles": ", ".join(f'"{i}"' for i in range(len(profiles)))},
                f"configs/{TENSORRT_CONFIG}.pbtxt")
        task_graph(engines, task, out / name / "1" / "model.onnx")
        write_profiles(out / name / PROFILES_FILE, profiles)
        _render("ensemble", out, ensemble_name(task), _ensemble_values(task, values, timing=False),
                f"configs/{TENSORRT_CONFIG}.pbtxt")


def _ensemble_values(task: str, values, timing: bool = True) -> dict:
    """A TensorRT plan reports no encode time, so its ensembles do not map one."""
    return {**values("ensemble"), "preprocess_model": PREPROCESS_MODEL, "postprocess_model": POSTPROCESS_MODEL,
            "encoder_model": encoder_name(task),
            "encoder_timing_output": 'output_map { key: "encode_us" value: "_encode_us" }' if timing else "",
            "encoder_timing_input": 'input_map { key: "encode_us" value: "_encode_us" }' if timing else ""}


def _calibration_engine(checkpoint, engines):
    """pooled(task, ids, mask) in fp32 for every task of the checkpoint, whichever tasks are served:
    one calibration per checkpoint, so a server of some tasks quantizes exactly as one of all."""
    if engines is not None:
        fp32 = {task: engines.engine(task, "fp32") for task in checkpoint.tasks}
        return lambda task, ids, mask: fp32[task].forward(ids, mask)
    return torch_pooled(checkpoint)


# -- the build -----------------------------------------------------------------------
def build_repository(checkpoint: Checkpoint, out: Path, options: BuildOptions | None = None,
                     cache_dir: Path | None = None, progress=None, reference=None) -> dict:
    options = (options or BuildOptions()).resolved()
    options.check(int(checkpoint.config["max_position_embeddings"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build of a repository at a time
        return _build(checkpoint, out, options, cache_dir, progress, reference)


def _build(checkpoint, out: Path, options: BuildOptions, cache_dir, progress, reference) -> dict:
    report = progress or (lambda message: None)
    snapshot = new_snapshot(out)

    def values(template: str) -> dict:
        """A template's options, and the model width every model but the ensembles names."""
        found = options.template_values(template)
        if template in PYTHON_MODELS:
            found["execution_env"] = execution_env(template, options.pack_env, options.numpy_env)
        return found if template == "ensemble" else {**found, "hidden_size": checkpoint.hidden_size}

    tasks = options.served_tasks(checkpoint.tasks)
    onnx = options.target in ("cpu", "tensorrt")
    engines = build_engines(checkpoint, options.precision if options.target == "cpu" else "fp32", cache_dir,
                            progress, reference, tasks, prepack=options.target == "cpu") if onnx else None
    entry = engines.entry if engines else cache_entry(checkpoint, cache_dir)
    parity = {}
    if options.target != "cpu":
        reference_box: list = [reference]

        def make_reference():
            if reference_box[0] is None:
                from .reference import ReferenceEncoder
                reference_box[0] = ReferenceEncoder(checkpoint)
            return reference_box[0]
        parity = {task: reference_parity(entry, task, make_reference) for task in tasks}

    version = _render("preprocess", snapshot, PREPROCESS_MODEL, {**values("preprocess"), "length_buckets": ""})
    shutil.copy2(checkpoint.path / "tokenizer.json", version / "tokenizer.json")
    if options.target == "cpu":
        _onnx_encoders(checkpoint, tasks, snapshot, engines, values)
    else:
        _torch_encoders(checkpoint, tasks, snapshot, parity, values)
    if options.target == "tensorrt":
        _tensorrt_configs(tasks, snapshot, options, engines, values)
    calibration = calibrate(checkpoint, entry, _calibration_engine(checkpoint, engines), report)
    version = _render("postprocess", snapshot, POSTPROCESS_MODEL, values("postprocess"))
    shutil.copy2(calibration, version / "calibration.npz")
    for task in tasks:
        _render("ensemble", snapshot, ensemble_name(task), _ensemble_values(task, values))

    manifest = {
        "contract_version": CONTRACT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": {"source": str(checkpoint.path), "fingerprint": checkpoint.fingerprint,
                       "synthetic": checkpoint.synthetic, "label": checkpoint.label},
        "target": options.target,
        "tensorrt_run": False if options.target == "tensorrt" else None,  # no TensorRT on this project's machines
        "precision": options.precision,
        "hidden_size": checkpoint.hidden_size,
        "tasks": list(tasks),
        "options": options.as_dict(),
        "engines": {task: (engines.task_report(task) if engines else {}) for task in tasks},
    }
    write_requirements(snapshot, options.target)
    if options.pack_env:
        manifest["python_env"] = pack_environment(snapshot, options.target, report)
    (snapshot / MANIFEST).write_text(json.dumps(manifest, indent=2))
    publish(snapshot, out)
    report(f"repository {out} -> {snapshot.name}")
    return manifest
