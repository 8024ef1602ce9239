"""Where a served run's time goes: Triton's counters of every model (rows, queue), its statistics
per execution (compute input, infer, output), an encoder's own `run_packed` time, and the CPU each
process took (Triton itself, each model's stubs, the client), read before and after the run.
Standard library only: the GPU check runs it where nothing is installed."""
from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass, field

from jina_triton_client.contract import TASKS, ensemble_name
from jina_triton_pipeline.model_metrics import PASS_SECONDS_METRIC

from .bench import counter_totals, model_stats, token_totals

COUNTERS = {"rows": "nv_inference_count", "requests": "nv_inference_request_success",
            "queue_us": "nv_inference_queue_duration_us", "request_us": "nv_inference_request_duration_us",
            "packed_s": PASS_SECONDS_METRIC}
# per execution, from the statistics API's batch_stats (Triton's metrics add an execution's time to each request)
PARTS = ("compute_input", "compute_infer", "compute_output")
TICK = os.sysconf("SC_CLK_TCK")
ENSEMBLES = {ensemble_name(task) for task in TASKS}


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process (all its threads) so far; 0 where it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14, 15 of stat


def process_cpu(server) -> dict[str, float]:
    """CPU seconds so far by process: tritonserver, each model's stubs together, this one (the client)."""
    found = {"tritonserver": cpu_seconds(server.process.pid)}
    for (model, _), pids in server.stub_pids().items():
        found[model] = found.get(model, 0.0) + sum(cpu_seconds(pid) for pid in pids)
    found["client"] = cpu_seconds(os.getpid())
    return found


def executions(server) -> dict[str, dict[str, float]]:
    """model -> executions and ns of each compute part so far."""
    found: dict[str, dict[str, float]] = {}
    for model in model_stats(server):
        totals = found.setdefault(model["name"], {"executions": 0.0, **{part: 0.0 for part in PARTS}})
        for batch in model.get("batch_stats", []):
            totals["executions"] += int(batch["compute_infer"]["count"])
            for part in PARTS:
                totals[part] += int(batch[part]["ns"])
    return found


@dataclass
class Snapshot:
    counters: dict[str, dict[str, float]]
    tokens: dict[str, float]                 # the encoders' computed (padded) and real tokens
    executions: dict[str, dict[str, float]]
    cpu: dict[str, float]
    at: float = field(default_factory=time.perf_counter)

    @classmethod
    def take(cls, server) -> "Snapshot":
        with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        return cls({key: counter_totals(text, metric, "model") for key, metric in COUNTERS.items()},
                   token_totals(text), executions(server), process_cpu(server))


def stages(before: Snapshot, after: Snapshot) -> dict:
    """Per model over the run: executions, rows per execution, queue ms per request, compute ms per
    execution (input, infer, output), an encoder's `run_packed` ms per execution (staging, its
    passes, the sync), the share of the run its instances spent computing (1.0 = one instance busy
    all along), the cores each process took."""
    seconds = after.at - before.at

    def counter(key: str, model: str) -> float:
        return after.counters[key].get(model, 0.0) - before.counters[key].get(model, 0.0)

    def execution(key: str, model: str) -> float:
        return after.executions[model][key] - before.executions.get(model, {}).get(key, 0.0)

    models = {}
    for model in sorted(after.executions):
        runs, requests = execution("executions", model), counter("requests", model)
        if not runs:
            continue
        compute = {part: execution(part, model) for part in PARTS}
        packed = counter("packed_s", model)
        models[model] = {
            "executions": int(runs), "rows_per_execution": round(counter("rows", model) / runs, 1),
            "queue_ms_per_request": round(counter("queue_us", model) / max(requests, 1) / 1e3, 2),
            "request_ms": round(counter("request_us", model) / max(requests, 1) / 1e3, 2),
            **{f"{part.split('_')[1]}_ms_per_execution": round(ns / runs / 1e6, 2) for part, ns in compute.items()},
            "run_packed_ms_per_execution": round(packed / runs * 1e3, 2) if packed else None,
            # an ensemble's "compute" is its requests' whole time, overlapping: no share of the run
            "busy": None if model in ENSEMBLES else round(sum(compute.values()) / 1e9 / seconds, 2)}
    cores = {name: round((after.cpu.get(name, 0.0) - before.cpu.get(name, 0.0)) / seconds, 2)
             for name in after.cpu}
    return {"seconds": round(seconds, 1), "models": models, "cores": cores}


COLUMNS = ("executions", "rows_per_execution", "queue_ms_per_request", "request_ms", "input_ms_per_execution",
           "infer_ms_per_execution", "output_ms_per_execution", "run_packed_ms_per_execution", "busy")


def markdown(profile: dict) -> list[str]:
    lines = ["| model | executions | rows/exec | queue ms/req | request ms | input ms/exec | infer ms/exec | "
             "output ms/exec | run_packed ms/exec | busy | cores |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, row in profile["models"].items():
        cells = ["" if row[key] is None else row[key] for key in COLUMNS]
        lines.append(f"| {model} | " + " | ".join(map(str, cells)) + f" | {profile['cores'].get(model, '')} |")
    others = ", ".join(f"{name} {value}" for name, value in profile["cores"].items() if name not in profile["models"])
    return lines + [f"cores: {others}"]
