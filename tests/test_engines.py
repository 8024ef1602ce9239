"""The shared-backbone ONNX engines against the reference: every task through the one graph with its
adapter bound, every input type, dimension, padded batches; the cache; the repository's sharing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, linked_copy, sample_texts
from jina_triton_build.engines import ENGINE_FILES, build_engines, ort_session, run_session, task_graph
from jina_triton_client.contract import TASKS
from jina_triton_pipeline.internals import encoder_name
from jina_triton_pipeline.onnx_engine import (ADAPTER_FILE, PREPACKED_GRAPH, PREPACKED_STAMP, OnnxEngine,
                                               machine_key, serving_graph)
from jina_triton_pipeline.pooling import matryoshka, min_cosine

BATCHES = {  # padded batches of different lengths
    "mixed": sample_texts(),
    "short": ["a", "tiny query", "another short one here"],
    "long-truncated": ["lorem ipsum dolor " * 30, "short one"],
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("input_type", ["query", "document"])
def test_fp32_engine_matches_reference(fp32_engines, reference, task, input_type):
    engine = fp32_engines.engine(task)
    for name, texts in BATCHES.items():
        max_length = 48 if name == "long-truncated" else None
        batch = reference.tokenize(texts, input_type, max_length=max_length)
        pooled = engine.forward(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
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
        int8 = int8_engines.engine(task, "int8").forward(ids, mask)
        fp32 = fp32_engines.engine(task, "fp32").forward(ids, mask)
        cosine = min(float(np.sum(matryoshka(int8, d) * matryoshka(fp32, d), axis=1).min()) for d in (32, 256, 768))
        assert cosine >= 0.99, (task, cosine)
        entry = int8_engines.task_report(task)["int8"]
        assert entry["against"] == "fp32 engine" and 0.99 <= entry["min_cosine"] < 1.0


def test_one_backbone_serves_every_task_and_each_adapter_changes_it(fp32_engines, reference):
    """One graph file for the four tasks; without an adapter's update (zeros bound) the output is the
    bare backbone's, with it each task's own: the adapters are what the inputs carry."""
    batch = reference.tokenize(sample_texts()[:4], "document")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    engines = {task: fp32_engines.engine(task) for task in TASKS}
    outputs = {task: engine.forward(ids, mask) for task, engine in engines.items()}
    zeros = {name: np.zeros_like(array) for name, array in engines["retrieval"].adapter_inputs.items()}
    bare = run_session(engines["retrieval"].session, ids, mask, zeros)
    for task, pooled in outputs.items():
        assert np.abs(pooled - bare).max() > 1e-3, task
    assert len({tuple(np.round(p[0, :4], 5)) for p in outputs.values()}) == len(TASKS)
    assert [p.name for p in fp32_engines.files()] == [ENGINE_FILES["fp32"], ENGINE_FILES["fp32"] + ".data"]


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_the_one_thread_session_beside_another_pass_matches_the_reference(tiny_repository, reference, tmp_path,
                                                                          input_type):
    """What a busy instance runs (core_share.py): the served graph on one thread, for every task, as the
    reference computes it and as the wide session does."""
    import os

    from jina_triton_pipeline.core_share import PassRegistry

    texts = sample_texts()
    batch = reference.tokenize(texts, input_type)
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    other = PassRegistry(tmp_path, f"{os.getpid()}-other")
    for task in TASKS:
        version = tiny_repository / encoder_name(task) / "1"
        graph = serving_graph(version, ENGINE_FILES["fp32"])[0]
        engine = OnnxEngine(ort_session(graph, 2), 0, version / ADAPTER_FILE, narrow=ort_session(graph, 1),
                            registry=PassRegistry(tmp_path, f"{os.getpid()}-{task}"))
        wide = engine.forward(ids, mask)
        with other.running():
            narrow = engine.forward(ids, mask)
        assert {width: count for width, (count, _) in engine.take_passes().items()} == {"wide": 1, "narrow": 1}
        np.testing.assert_allclose(narrow, wide, atol=1e-5)
        for dims in (32, 256, 768):
            want = reference.encode(texts, task, input_type, dimensions=dims)
            assert np.sum(matryoshka(narrow, dims) * want, axis=1).min() >= 0.99999, (task, dims)
        engine.registry.close()


@pytest.mark.parametrize("task", ["retrieval", "classification"])
def test_a_folded_task_graph_equals_the_shared_one(tmp_path, fp32_engines, task):
    """TensorRT takes one graph per task, the adapter folded in as weights: the same function."""
    ids = np.array([[5, 6, 7, 8, 9, 2], [5, 6, 2, 0, 0, 0]], np.int64)
    mask = (ids > 0).astype(np.int64)
    folded = run_session(ort_session(task_graph(fp32_engines, task, tmp_path / "model.onnx")), ids, mask)
    np.testing.assert_allclose(folded, fp32_engines.engine(task).forward(ids, mask), atol=1e-5)


def test_second_build_reuses_engines(tiny_checkpoint, reference, engine_cache, fp32_engines):
    mtimes = [path.stat().st_mtime_ns for path in fp32_engines.files()]
    messages = []
    again = build_engines(tiny_checkpoint, "fp32", engine_cache, progress=messages.append, reference=reference)
    assert any("reused" in m for m in messages)
    assert [path.stat().st_mtime_ns for path in again.files()] == mtimes


def test_a_damaged_engine_is_rebuilt_and_a_crashed_build_leaves_nothing(tmp_path, tiny_checkpoint, reference,
                                                                        fp32_engines):
    """Crash-safe cache: a file that no longer matches its digest is rebuilt; partial files never count."""
    cache = linked_copy(fp32_engines.directory.parent.parent, tmp_path / "cache")
    engines = build_engines(tiny_checkpoint, "fp32", cache, reference=reference)
    path = engines.files()[1]  # the weights
    shared = fp32_engines.files()[1]
    shutil.copyfile(path, path.with_name("private"))  # not through the hard link
    path.with_name("private").replace(path)
    with open(path, "r+b") as file:  # a torn write in the middle
        file.seek(path.stat().st_size // 2)
        file.write(b"\0" * 4096)
    (path.parent / f".{path.name}.999.partial").write_bytes(b"half an engine")
    messages = []
    again = build_engines(tiny_checkpoint, "fp32", cache, progress=messages.append, reference=reference)
    assert any(m.startswith("backbone exported") for m in messages)
    assert again.entry.intact(path, again.report["fp32"]["digests"][path.name])
    reused = []
    build_engines(tiny_checkpoint, "fp32", cache, progress=reused.append, reference=reference)
    assert any("reused" in m for m in reused)
    assert fp32_engines.entry.intact(shared, fp32_engines.report["fp32"]["digests"][shared.name])  # the copy's source


def test_concurrent_builds_share_one_export(tmp_path, tiny_checkpoint_dir, fp32_engines):
    """Two builds of one checkpoint at once: the second waits for the first and reuses its engines."""
    cache = linked_copy(fp32_engines.directory.parent.parent, tmp_path / "cache")
    entry = next((cache / "engines").iterdir())
    report = json.loads((entry / "report.json").read_text())
    report["fp32"]["digests"]["backbone.onnx"] = "stale"  # force one re-export
    (entry / "report.json").write_text(json.dumps(report))
    command = [sys.executable, "-m", "jina_triton_serving.cli", "build", "--checkpoint", str(tiny_checkpoint_dir),
               "--cache-dir", str(cache)]
    builds = [subprocess.Popen(command + ["--out", str(tmp_path / f"repo{i}")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT) for i in range(2)]
    logs = [build.communicate(timeout=600)[0] for build in builds]
    assert all(build.returncode == 0 for build in builds), logs
    assert sum(log.count("backbone exported") for log in logs) == 1, logs


def test_cli_build_writes_engines_and_manifest(tmp_path, tiny_checkpoint_dir, engine_cache, int8_engines):
    out = tmp_path / "repo"
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "build", "--checkpoint",
                             str(tiny_checkpoint_dir), "--out", str(out), "--cache-dir", str(engine_cache),
                             "--precision", "int8"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"]["synthetic"] is True and manifest["precision"] == "int8"
    inodes = set()
    for task in TASKS:
        version = out / encoder_name(task) / "1"
        for name in (ENGINE_FILES["int8"], ENGINE_FILES["int8"] + ".data", PREPACKED_GRAPH, PREPACKED_GRAPH + ".data"):
            inodes.add((version / name).stat().st_ino)
        assert serving_graph(version, ENGINE_FILES["int8"])[0] == version / PREPACKED_GRAPH
        assert (version / "adapter.npz").is_file()
        assert manifest["engines"][task]["fp32"]["min_cosine"] >= 0.99999
        assert 0.99 <= manifest["engines"][task]["int8"]["min_cosine"] < 1.0
    assert len(inodes) == 4  # the portable and the pre-packed graph and weights, linked into every task's folder


def test_prepacked_weights_serve_only_the_machine_they_were_laid_out_for(tmp_path, tiny_repository, reference):
    """The pre-packed graph equals the portable one; a stamp of another CPU or onnxruntime falls back
    to the portable graph, saying why."""
    version = tiny_repository / encoder_name("clustering") / "1"
    graph, why = serving_graph(version, ENGINE_FILES["fp32"])
    assert graph.name == PREPACKED_GRAPH and "shared by every encoder" in why
    batch = reference.tokenize(sample_texts(), "document")
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    packed = OnnxEngine(ort_session(graph), 0, version / ADAPTER_FILE).forward(ids, mask)
    portable = OnnxEngine(ort_session(version / ENGINE_FILES["fp32"]), 0, version / ADAPTER_FILE).forward(ids, mask)
    assert min_cosine(packed, portable) >= 0.99999
    moved = tmp_path / "moved"
    linked_copy(version, moved)
    (moved / PREPACKED_STAMP).write_text(json.dumps({**machine_key(), "isa": ["sse4_1"]}))
    graph, why = serving_graph(moved, ENGINE_FILES["fp32"])
    assert graph == moved / ENGINE_FILES["fp32"] and "laid out for" in why and "rebuild the repository" in why
    (moved / PREPACKED_STAMP).unlink()
    assert serving_graph(moved, ENGINE_FILES["fp32"])[0] == moved / ENGINE_FILES["fp32"]


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
