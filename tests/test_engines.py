"""ONNX engines against the reference: every task, input type, dimension, padded batches."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, sample_texts
from jina_triton_build.engines import build_engines, ort_session, run_session
from jina_triton_client.contract import TASKS
from jina_triton_pipeline.internals import encoder_name
from jina_triton_pipeline.pooling import matryoshka

BATCHES = {  # padded batches of different lengths
    "mixed": sample_texts(),
    "short": ["a", "tiny query", "another short one here"],
    "long-truncated": ["lorem ipsum dolor " * 30, "short one"],
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("input_type", ["query", "document"])
def test_fp32_engine_matches_reference(fp32_engines, reference, task, input_type):
    session = ort_session(fp32_engines.path(task))
    for name, texts in BATCHES.items():
        max_length = 48 if name == "long-truncated" else None
        batch = reference.tokenize(texts, input_type, max_length=max_length)
        pooled = run_session(session, batch["input_ids"].numpy(), batch["attention_mask"].numpy())
        for dims in (32, 256, 768):
            want = reference.encode(texts, task, input_type, dimensions=dims, max_length=max_length)
            got = matryoshka(pooled, dims)
            cosine = np.sum(got * want, axis=1)
            assert cosine.min() >= 0.99999, (name, dims, cosine)


def test_int8_engines_stay_near_fp32_when_run(int8_engines, fp32_engines, reference):
    """The int8 engines themselves, run on texts the build never saw, against the fp32 engines: the
    README's figure (full replica) is a minimum cosine of 0.9957; the report agrees with the run."""
    texts = sample_texts()
    for task in TASKS:
        batch = reference.tokenize(texts, "document", max_length=256)
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        int8 = run_session(ort_session(int8_engines.path(task, "int8")), ids, mask)
        fp32 = run_session(ort_session(fp32_engines.path(task, "fp32")), ids, mask)
        cosine = min(float(np.sum(matryoshka(int8, d) * matryoshka(fp32, d), axis=1).min()) for d in (32, 256, 768))
        assert cosine >= 0.99, (task, cosine)
        entry = int8_engines.report[task]["int8"]
        assert entry["against"] == "fp32 engine" and 0.99 <= entry["min_cosine"] < 1.0


def test_second_build_reuses_engines(tiny_checkpoint, reference, engine_cache, fp32_engines):
    mtimes = {task: fp32_engines.path(task).stat().st_mtime_ns for task in TASKS}
    messages = []
    again = build_engines(tiny_checkpoint, "fp32", engine_cache, progress=messages.append, reference=reference)
    assert any("reused" in m for m in messages)
    assert {task: again.path(task).stat().st_mtime_ns for task in TASKS} == mtimes


def test_a_damaged_engine_is_rebuilt_and_a_crashed_build_leaves_nothing(tmp_path, tiny_checkpoint, reference,
                                                                        fp32_engines):
    """Crash-safe cache: a file that no longer matches its digest is rebuilt; partial files never count."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(fp32_engines.directory.parent.parent, cache)
    engines = build_engines(tiny_checkpoint, "fp32", cache, reference=reference)
    path = engines.path("clustering")
    with open(path, "r+b") as file:  # a torn write in the middle
        file.seek(path.stat().st_size // 2)
        file.write(b"\0" * 4096)
    (path.parent / ".model.onnx.999.partial").write_bytes(b"half an engine")
    messages = []
    again = build_engines(tiny_checkpoint, "fp32", cache, progress=messages.append, reference=reference)
    assert any(m.startswith("clustering: exported") for m in messages)
    assert not any(m.startswith("retrieval: exported") for m in messages)
    assert again.entry.intact(path, again.report["clustering"]["fp32"]["digest"])


def test_concurrent_builds_share_one_export(tmp_path, tiny_checkpoint_dir, fp32_engines):
    """Two builds of one checkpoint at once: the second waits for the first and reuses its engines."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(fp32_engines.directory.parent.parent, cache)
    entry = next((cache / "engines").iterdir())
    report = json.loads((entry / "report.json").read_text())
    report["retrieval"]["fp32"]["digest"] = "stale"  # force one re-export
    (entry / "report.json").write_text(json.dumps(report))
    command = [sys.executable, "-m", "jina_triton_serving.cli", "build", "--checkpoint", str(tiny_checkpoint_dir),
               "--cache-dir", str(cache)]
    builds = [subprocess.Popen(command + ["--out", str(tmp_path / f"repo{i}")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT) for i in range(2)]
    logs = [build.communicate(timeout=600)[0] for build in builds]
    assert all(build.returncode == 0 for build in builds), logs
    assert sum(log.count("retrieval: exported") for log in logs) == 1, logs


def test_cli_build_writes_engines_and_manifest(tmp_path, tiny_checkpoint_dir, engine_cache, int8_engines):
    out = tmp_path / "repo"
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "build", "--checkpoint",
                             str(tiny_checkpoint_dir), "--out", str(out), "--cache-dir", str(engine_cache),
                             "--precision", "int8"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"]["synthetic"] is True and manifest["precision"] == "int8"
    for task in TASKS:
        assert (out / encoder_name(task) / "1" / "model.onnx").is_file()
        assert manifest["engines"][task]["fp32"]["min_cosine"] >= 0.99999


def test_cli_build_bad_checkpoint_is_a_clean_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "build", "--checkpoint",
                             str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "has no config.json" in result.stderr and "Traceback" not in result.stderr


def test_the_int8_ranges_equal_ranges_computed_from_the_reference(tiny_repository, reference):
    """The served int8/uint8 ranges, recomputed independently: the reference encoder (peft, unmerged)
    on the calibration's texts (every 4th corpus sentence, every task and input type, cut at 512
    tokens), each Matryoshka width normalized on its own, per-dimension min and max."""
    from jina_triton_build.corpus import corpus_sentences
    from jina_triton_tools.comparison import calibration_tables

    texts = sorted(corpus_sentences()[::4], key=len)
    pooled = []
    for task in TASKS:
        for input_type in ("query", "document"):
            for start in range(0, len(texts), 16):
                batch = reference.tokenize(texts[start:start + 16], input_type, max_length=512)
                pooled.append(reference.pooled(task, batch))
    pooled = np.concatenate(pooled).astype(np.float64)
    minimum, maximum = calibration_tables(tiny_repository)
    width = pooled.shape[1]
    for dims in (32, 33, 64, 100, 256, width):
        vectors = pooled[:, :dims] / np.linalg.norm(pooled[:, :dims], axis=1, keepdims=True)
        np.testing.assert_allclose(minimum[dims - 32, :dims], vectors.min(axis=0), atol=2e-5)
        np.testing.assert_allclose(maximum[dims - 32, :dims], vectors.max(axis=0), atol=2e-5)
