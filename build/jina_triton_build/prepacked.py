"""The `cpu` target's serving graph for this machine: the backbone with its weights pre-packed into
the external data file, so that every encoder stub maps one copy (why: onnx_engine.py). Cached per
machine key (onnxruntime version, instruction sets) in the checkpoint's cache entry, and verified
against the portable graph for every task before it is used."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from jina_triton_pipeline.onnx_engine import PREPACKED_GRAPH, PREPACKED_STAMP, machine_key, save_prepacked
from jina_triton_pipeline.pooling import min_cosine

PREPACKED_MIN_COSINE = 0.99999  # the same arithmetic, laid out ahead of time: it must not move
CHECK_ROWS = 8


def prepacked_name(precision: str) -> str:
    return f"{precision}-{hashlib.sha256(json.dumps(machine_key()).encode()).hexdigest()[:12]}"


def prepacked_files(engines, precision: str) -> list[Path]:
    folder = engines.directory / "prepacked" / prepacked_name(precision)
    return [folder / PREPACKED_GRAPH, folder / (PREPACKED_GRAPH + ".data"), folder / PREPACKED_STAMP]


def ensure_prepacked(engines, precision: str, checks: dict, staged, commit, report_step) -> list[Path]:
    """The pre-packed graph of `precision` for this machine, built and verified once (the caller
    holds the entry's lock; `staged` and `commit` are the engine build's); [] where it does not
    match the portable graph (the encoders then serve that one, each with its own weights)."""
    files, name = prepacked_files(engines, precision), prepacked_name(precision)
    recorded = engines.report.get("prepacked", {}).get(name, {})
    if all(engines.entry.intact(path, recorded.get("digests", {}).get(path.name)) for path in files):
        return files
    started = time.perf_counter()
    with staged(engines.entry) as folder:
        graph = save_prepacked(engines.path(precision), folder)
        worst = 1.0
        for task, check in checks.items():  # its shortest rows: the layout is the same for every row
            lengths = check.attention_mask.sum(axis=1)
            rows = np.argsort(lengths, kind="stable")[:CHECK_ROWS]
            width = int(lengths[rows].max())
            ids, mask = check.input_ids[rows, :width], check.attention_mask[rows, :width]
            packed = engines.engine(task, graph=graph).forward(ids, mask)
            worst = min(worst, min_cosine(packed, engines.engine(task, precision).forward(ids, mask)))
        engines.sessions.pop((graph, None), None)  # the staged file is about to move
        if worst < PREPACKED_MIN_COSINE:
            report_step(f"WARNING: the pre-packed {precision} graph differs from the portable one (min cosine "
                        f"{worst:.6f} < {PREPACKED_MIN_COSINE}); serving the portable graph, each encoder with "
                        f"its own copy of the weights")
            return []
        files[0].parent.mkdir(parents=True, exist_ok=True)
        digests = commit(engines.entry, folder, files)
    engines.report.setdefault("prepacked", {})[name] = {"digests": digests, "min_cosine_vs_portable": worst,
                                                        "machine": machine_key(),
                                                        "seconds": round(time.perf_counter() - started, 1)}
    report_step(f"{precision} weights pre-packed for this CPU in {engines.report['prepacked'][name]['seconds']} s")
    return files
