"""Where a served run's time goes: Triton's counters of every model (executions, rows, queue,
compute) and the CPU each process took (Triton itself, each model's stubs, the client), read
before and after the run. Standard library only: the GPU check runs it where nothing is installed."""
from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass, field

from jina_triton_pipeline.model_metrics import PASS_SECONDS_METRIC

from .bench import counter_totals

COUNTERS = {"executions": "nv_inference_exec_count", "rows": "nv_inference_count",
            "requests": "nv_inference_request_success", "queue_us": "nv_inference_queue_duration_us",
            "input_us": "nv_inference_compute_input_duration_us",
            "infer_us": "nv_inference_compute_infer_duration_us",
            "output_us": "nv_inference_compute_output_duration_us",
            "request_us": "nv_inference_request_duration_us", "engine_s": PASS_SECONDS_METRIC}
TICK = os.sysconf("SC_CLK_TCK")


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


@dataclass
class Snapshot:
    counters: dict[str, dict[str, float]]
    cpu: dict[str, float]
    at: float = field(default_factory=time.perf_counter)

    @classmethod
    def take(cls, metrics_url: str, server) -> "Snapshot":
        with urllib.request.urlopen(metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        return cls({key: counter_totals(text, metric, "model") for key, metric in COUNTERS.items()},
                   process_cpu(server))


def stages(before: Snapshot, after: Snapshot) -> dict:
    """Per model over the run: executions, rows per execution, queue ms per request, compute ms per
    execution (input, infer, output; an encoder's engine, its passes and their sync), the share of
    the run its instances spent computing (1.0 = one instance busy all along), the cores each
    process took. Triton adds an execution's compute time to each of its requests: per execution
    is the mean over requests."""
    seconds = after.at - before.at

    def grown(key: str, model: str) -> float:
        return after.counters[key].get(model, 0.0) - before.counters[key].get(model, 0.0)

    models = {}
    for model in sorted(after.counters["executions"]):
        executions, requests = grown("executions", model), grown("requests", model)
        if not executions or not requests:
            continue
        per_execution = {key[:-3]: grown(key, model) / requests / 1e3 for key in ("input_us", "infer_us", "output_us")}
        engine = grown("engine_s", model)
        models[model] = {
            "executions": int(executions), "rows_per_execution": round(grown("rows", model) / executions, 1),
            "queue_ms_per_request": round(grown("queue_us", model) / requests / 1e3, 2),
            "request_ms": round(grown("request_us", model) / requests / 1e3, 2),
            **{f"{key}_ms_per_execution": round(value, 2) for key, value in per_execution.items()},
            "engine_ms_per_execution": round(engine / executions * 1e3, 2) if engine else None,
            "busy": round(sum(per_execution.values()) * executions / 1e3 / seconds, 2)}
    cores = {name: round((after.cpu.get(name, 0.0) - before.cpu.get(name, 0.0)) / seconds, 2)
             for name in after.cpu}
    return {"seconds": round(seconds, 1), "models": models, "cores": cores}


def markdown(profile: dict) -> list[str]:
    lines = ["| model | executions | rows/exec | queue ms/req | request ms | input ms/exec | infer ms/exec | "
             "output ms/exec | engine ms/exec | busy | cores |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, row in profile["models"].items():
        lines.append(f"| {model} | {row['executions']} | {row['rows_per_execution']} | {row['queue_ms_per_request']} | "
                     f"{row['request_ms']} | {row['input_ms_per_execution']} | {row['infer_ms_per_execution']} | "
                     f"{row['output_ms_per_execution']} | {row['engine_ms_per_execution'] or ''} | {row['busy']} | "
                     f"{profile['cores'].get(model, '')} |")
    others = ", ".join(f"{name} {value}" for name, value in profile["cores"].items() if name not in profile["models"])
    return lines + [f"cores: {others}"]
