"""The GPU check as the GPU machine runs it, emulated here: `tools/gpu-check.sh` itself, from a
copy of the tree, with a bundle made here and a Python environment that has none of this project
installed and the box's package versions (transformers 5.17.0, peft 0.21.0, numpy 2 beside
torch), its CUDA steps on the CPU. bf16 on the CPU stands in for half precision, so the
comparison must be precision-aware to pass; the stubs must split numpy as the box needs (1.x
where BYTES move, the machine's 2.x in the torch encoders); the report is written after every
step and a step past its bound ends the check with the report on disk."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# the GPU machine's versions where PyPI has them (torch is 2.11 cu130 there; the CPU wheel here is 2.13)
BOX_PACKAGES = ["torch==2.13.0", "numpy>=2,<3", "transformers==5.17.0", "peft==0.21.0", "tokenizers==0.23.2",
                "safetensors"]


@pytest.fixture(scope="module")
def box_python() -> Path:
    """A venv of the system Python (its libpython is the 3.11 stub's) with the box's packages: cached
    between runs on one machine, keyed by the package list."""
    key = hashlib.sha256(" ".join(BOX_PACKAGES).encode()).hexdigest()[:12]
    root = Path(os.environ.get("JINA_TRITON_CACHE") or Path.home() / ".cache" / "jina-triton") / f"test-box-env-{key}"
    python = root / "bin" / "python"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", str(root)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *BOX_PACKAGES], capture_output=True,
                              text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        (root / ".complete").write_text("ok\n")
    versions = subprocess.run([str(python), "-c", "import numpy, transformers, peft; print(numpy.__version__, "
                               "transformers.__version__, peft.__version__)"], capture_output=True, text=True)
    numpy, transformers, peft = versions.stdout.split()
    assert numpy.startswith("2.") and transformers == "5.17.0" and peft == "0.21.0", versions.stdout
    bare = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for project in ("jina_triton_build", "jina_triton_serving", "jina_triton_models", "jina_triton_client"):
        found = subprocess.run([str(python), "-c", f"import {project}"], capture_output=True, env=bare)
        assert found.returncode != 0, f"{project} must not be importable in the box's environment"
    return python


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from jina_triton_tools.gpu_bundle import make_bundle

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return make_bundle(tmp_path_factory.mktemp("bundle"), progress=lambda message: None, python=version, preset=0)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """This working tree as the device tool carries it: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp_path_factory.mktemp("tree")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def _check(tree: Path, bundle: Path, python: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "PYTHON": str(python), "OUT": str(out),
           "LANG": "C.UTF-8", "TMPDIR": str(out.parent)}
    return subprocess.run(["bash", str(tree / "tools" / "gpu-check.sh"), str(bundle), "--cpu", *args],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("encoders", ["eager", "compiled"])
def test_the_gpu_check_runs_from_a_raw_tree_in_the_boxs_environment(tree, bundle, box_python, tmp_path, encoders):
    out = tmp_path / "out"
    compiled = encoders == "compiled"
    done = _check(tree, bundle, box_python, out, "--precision", "bf16", "--seconds", "2", "--texts", "32",
                  "--sample-stacks", *(["--compiled-encoders"] if compiled else []))
    report = json.loads((out / "report.json").read_text())
    assert done.returncode == 0 and report["failures"] == [], (report["failures"], done.stdout[-4000:])
    assert set(report["steps"]) == {"environment", "replica", "build", "triton", "numpy", "parity", "engine", "served"}
    assert report["precision"] == "bf16" and report["numpy"].startswith("2.")
    assert report["environments"]["pip inside"] is False  # made with --without-pip: no ensurepip needed
    numpy_of = {model: seen.split()[0] for model, seen in report["stub_numpy"].items()}
    assert numpy_of["preprocess"] == numpy_of["postprocess"] == "1"
    assert {numpy_of[f"encoder_{t}"] for t in ("retrieval", "text_matching", "clustering", "classification")} == {"2"}
    assert len(report["parity"]) == 4 * 2 * 3 and 0.999 <= report["parity_min_float_cosine"] < 0.99999
    for row in report["parity"]:  # half precision: quantized outputs equal quantizing the served float
        assert all(row[name]["values_off"] == 0 for name in ("int8", "uint8", "binary", "ubinary")), row
    assert report["engine"]["tokens_per_s"] > 0 and [row["tasks"] for row in report["served"]] == [1, 4]
    if compiled:  # through torch.compile in a real stub (its C locale once broke inductor), the bare
        # engine compiled alike (served/engine compares like with like), and no graph compiled after warm-up
        assert report["options"]["compile_buckets"] and report["engine"]["compiled"], report["options"]
        assert "(bf16, compiled: " in (out / "triton.log").read_text()
        assert report["compiled_while_serving"] == 0 and report["engine"]["graphs_after_warm_up"] == 0, report
    else:
        assert report["engine_shuffled"]["tokens_per_s"] > 0 and not report["options"]["compile_buckets"]
    assert all(row["errors"] == 0 for row in report["served"])
    assert report["packing"] and "served/engine" in (out / "report.md").read_text()
    # where the time went: Triton's counters per model, the encoder's own engine time, each process's CPU
    stages = report["served"][0]["stages"]
    assert {"embed_retrieval", "preprocess", "encoder_retrieval", "postprocess"} <= set(stages["models"]), stages
    encoder = stages["models"]["encoder_retrieval"]
    # executions that straddle the window's edges make finer comparisons flaky at 2 s a row
    assert encoder["run_packed_ms_per_execution"] > 0 and encoder["infer_ms_per_execution"] > 0, encoder
    assert encoder["busy"] > 0 and encoder["rows_per_execution"] >= 1, encoder
    assert stages["cores"]["encoder_retrieval"] > 0 and "tritonserver" in stages["cores"]
    sampled = (out / "stacks.txt").read_text()
    assert "## encoder_retrieval" in sampled and "## preprocess" in sampled, sampled[:2000]
    encoder = sampled.split("## encoder_retrieval")[1].split("## ")[0]
    assert "MainThread" in encoder and ("eurobert.py" in encoder or "encoder_step.py" in encoder), encoder


def test_the_report_is_on_disk_after_every_step_and_a_step_past_its_bound_ends_the_check(tmp_path):
    script = f"""
import sys, time
sys.path[:0] = {[str(REPO_ROOT / "tools"), str(REPO_ROOT / "client")]!r}
from pathlib import Path
from jina_triton_tools import gpu_check
gpu_check.STEP_SECONDS.update(environment=60, replica=0.5)
report = gpu_check.Report(Path({str(tmp_path)!r}), 1.0, 60)
with report.step("environment"):
    report.data["workload"] = {{"texts": 123}}
with report.step("replica"):
    time.sleep(30)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"]["environment"]["ok"] and report["workload"]["texts"] == 123
    assert [f for f in report["failures"] if f.startswith("step replica: not done within")], report["failures"]


def test_graphs_compiled_while_serving_are_counted_in_this_runs_part_of_the_log(tmp_path):
    """The check sums the encoders' own warnings (one formatter writes them), from where this run's
    Triton started appending: a folder reused keeps an earlier run's lines in triton.log."""
    from jina_triton_pipeline.torch_engine import compiled_while_serving_line
    from jina_triton_tools.gpu_check import compiled_while_serving

    log = tmp_path / "triton.log"
    log.write_text(f"W1204 model.py:55] {compiled_while_serving_line('encoder_retrieval', 5, 8, 8)}\n")
    since = log.stat().st_size
    with open(log, "a") as more:
        more.write("I1204 model.py:41] encoder_clustering: parity gate passed on cuda:0 (fp16, compiled: 3 graphs)\n"
                   f"W1204 model.py:55] {compiled_while_serving_line('encoder_retrieval', 2, 5, 8)}\n"
                   f"W1204 model.py:55] {compiled_while_serving_line('encoder_clustering', 1, 8, 8)}\n")
    assert "recompile limit (8) is reached" in compiled_while_serving_line("encoder_clustering", 1, 8, 8)
    assert compiled_while_serving(log, since) == 3
    assert compiled_while_serving(log, 0) == 8


def test_the_stack_sampler_never_keeps_a_returned_functions_locals_alive(tmp_path):
    """A frame the sampler held over its sleep kept that function's locals alive after it returned;
    torch restores grad mode in such a local's destructor, and a compile in a sampled stub failed
    ("Global grad_mode state changed while dynamo tracing"). Old sampler: ~100 of ~1.2M calls in 3 s."""
    import time

    from jina_triton_tools import stub_sampler

    released = []

    class Restores:  # as the guard dynamo drops on return
        def __del__(self):
            released.append(1)

    def enter():
        guard = Restores()  # noqa: F841 - alive until the frame goes
        for _ in range(200):
            pass

    stop = stub_sampler.start(str(tmp_path), interval=0.0005)
    late = calls = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < 3:
            before = len(released)
            enter()
            calls += 1
            late += len(released) == before
    finally:
        stop.set()
    assert calls > 10_000 and late == 0, (calls, late)


def test_the_stack_sampler_writes_what_it_sampled_when_stopped(tmp_path):
    """A run shorter than the sampler's write period still leaves its stacks (written once stopped)."""
    import time

    from jina_triton_tools import stub_sampler

    def busy_in_a_named_function():
        until = time.monotonic() + 0.3
        while time.monotonic() < until:
            pass

    stop = stub_sampler.start(str(tmp_path), interval=0.005)
    busy_in_a_named_function()
    stop.set()
    path = tmp_path / f"stacks-{os.getpid()}.txt"
    deadline = time.monotonic() + stub_sampler.WRITE_EVERY_S / 2  # well before a periodic write
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists() and "busy_in_a_named_function" in path.read_text()


def test_the_bundle_is_ignored_by_git_and_carried_beside_the_tree(tmp_path):
    (REPO_ROOT / ".gpu-bundle").mkdir(exist_ok=True)
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu-bundle/triton.tar.xz"], cwd=REPO_ROOT)
        assert ignored.returncode == 0, ".gpu-bundle must be ignored: a commit could swallow 50 MB"
    finally:
        if not any((REPO_ROOT / ".gpu-bundle").iterdir()):
            (REPO_ROOT / ".gpu-bundle").rmdir()
