"""`make bench-sweep`: the `cpu` target's serving defaults chosen by measurement, not by guess.

Each candidate (token budget, padding bound, instances per encoder, threads per instance, whether a
pass beside another takes one thread, the batching windows) is built from one engine cache (only the configs differ)
and served through the real Triton; the same mixed workload at a saturating concurrency gives its
tokens/s, one short query on the idle server its latency, and the whole server's PSS after the
load. Hosts of this machine kind drift by a third within minutes, so the candidates run in rounds,
each round serving every candidate once in turn; a row is its median over the rounds, beside the
round's spread. Printed as the table the README carries; nothing here is asserted.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from jina_triton_pipeline.packing import MAX_PADDING

from .bench import SHORT_QUERY, served
from .machine import cpu_identity, encoder_flops, server_memory
from .workload import Workload, token_counter

# Each candidate: the build options it changes from the defaults below. First the token budgets with
# the cores shared by the running passes, then fixed threads and the splits of the cores, then the
# batching windows.
BASE = {"token_budget": 512, "max_padding": MAX_PADDING, "encoder_instances": 2, "threads": 2, "fixed_threads": False,
        "queue_delay_us": 0, "preprocess_queue_delay_us": 0}
CANDIDATES = ({"token_budget": 2048}, {"token_budget": 1024}, {}, {"token_budget": 256}, {"max_padding": 1.25},
              {"fixed_threads": True, "token_budget": 2048}, {"fixed_threads": True}, {"encoder_instances": 1},
              {"threads": 1}, {"queue_delay_us": 2000, "preprocess_queue_delay_us": 500})


def run_sweep(checkpoint, out: Path, cache_dir: Path | None = None, count: int = 128, concurrency: int = 8,
              task: str = "retrieval", candidates=CANDIDATES, progress=print, rounds: int = 2,
              precision: str = "fp32") -> list[dict]:
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.repository import build_repository
    from jina_triton_serving.triton_process import TritonServer

    out.mkdir(parents=True, exist_ok=True)
    texts = Workload(token_counter(checkpoint.path / "tokenizer.json"), 0).texts("mixed", count)
    flops = encoder_flops(checkpoint.config, [t.tokens for t in texts])
    candidates = [{**BASE, **candidate} for candidate in candidates]
    repositories = []
    for number, candidate in enumerate(candidates):
        repositories.append(out / f"repository-{number}")
        build_repository(checkpoint, repositories[-1], BuildOptions(precision=precision, **candidate), cache_dir)
    measured = [[] for _ in candidates]
    for round_number in range(1, rounds + 1):
        for number, (candidate, repository) in enumerate(zip(candidates, repositories)):
            progress(f"round {round_number}/{rounds}, [{number + 1}/{len(candidates)}] {_label(candidate)}")
            with TritonServer.on_free_ports(repository, log_file=out / "server.log") as server:
                run = served(server, texts, task, concurrency, 1, flops)
                memory = server_memory(server.process.pid)["total_mb"]
            summary = run.summary(1.0)
            measured[number].append({key: summary[key] for key in ("tokens_per_s", "short_query_ms", "padded_ratio")})
            measured[number][-1]["pss_mb"] = memory
            progress(f"    {summary['tokens_per_s']} tokens/s, short query {summary['short_query_ms']} ms, {memory} MB")
    rows = [{**candidate, **_median_row(runs)} for candidate, runs in zip(candidates, measured)]
    report = {"cpu": cpu_identity(), "checkpoint": checkpoint.label, "precision": precision, "texts": count,
              "concurrency": concurrency, "rounds": rounds, "short_query": SHORT_QUERY,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    (out / f"sweep-{precision}-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    return rows


def _label(candidate: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in candidate.items() if BASE.get(key) != value) or "the defaults"


def _median_row(runs: list[dict]) -> dict:
    tokens = [run["tokens_per_s"] for run in runs]
    return {"tokens_per_s": round(statistics.median(tokens), 1), "rounds_tokens_per_s": tokens,
            "short_query_ms": round(statistics.median(run["short_query_ms"] for run in runs), 1),
            "padded_ratio": runs[-1]["padded_ratio"], "pss_mb": max(run["pss_mb"] for run in runs)}


def sweep_markdown(rows: list[dict]) -> str:
    best = max(rows, key=lambda row: row["tokens_per_s"])
    lines = ["| token budget | padding | instances x threads | a pass beside another | queue windows µs "
             "| served tokens/s (median) | each round | short query ms | padded | PSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        mark = " **(best)**" if row is best else ""
        sharing = f"{row['threads']} threads" if row["fixed_threads"] and row["threads"] > 1 else "1 thread"
        rounds = ", ".join(f"{value:.0f}" for value in row["rounds_tokens_per_s"])
        split = f"{row['encoder_instances']} x {row['threads']}"
        windows = f"{row['queue_delay_us']} / {row['preprocess_queue_delay_us']}"
        lines.append(f"| {row['token_budget']} | {row['max_padding']} | {split} | {sharing} | {windows} | "
                     f"{row['tokens_per_s']}{mark} | {rounds} | {row['short_query_ms']} | {row['padded_ratio']} | "
                     f"{row['pss_mb']} |")
    return "\n".join(lines) + "\n"
