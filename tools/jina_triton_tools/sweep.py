"""`make bench-sweep`: the `cpu` target's serving defaults chosen by measurement, not by guess.

Each candidate (token budget, padding bound, instances per encoder, threads per instance) is built
from one engine cache (only the configs differ) and served through the real Triton; the same
mixed workload at a saturating concurrency gives its tokens/s, and one short query on the idle
server its latency. Printed as the table the README carries; nothing here is asserted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from jina_triton_pipeline.packing import MAX_PADDING

from .bench import SHORT_QUERY, served
from .machine import cpu_identity, encoder_flops, server_memory
from .workload import Workload, token_counter

# (token budget, padding bound, instances, threads): the budgets at the current split of the
# cores, then the splits at a small budget
CANDIDATES = ((8192, MAX_PADDING, 2, 2), (4096, MAX_PADDING, 2, 2), (2048, MAX_PADDING, 2, 2),
              (1024, MAX_PADDING, 2, 2), (2048, 1.25, 2, 2), (2048, MAX_PADDING, 1, 2),
              (2048, MAX_PADDING, 2, 1), (2048, MAX_PADDING, 4, 1))


def run_sweep(checkpoint, out: Path, cache_dir: Path | None = None, count: int = 128, concurrency: int = 8,
              task: str = "retrieval", candidates=CANDIDATES, progress=print) -> list[dict]:
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.repository import build_repository
    from jina_triton_serving.triton_process import TritonServer

    out.mkdir(parents=True, exist_ok=True)
    texts = Workload(token_counter(checkpoint.path / "tokenizer.json"), 0).texts("mixed", count)
    flops = encoder_flops(checkpoint.config, [t.tokens for t in texts])
    rows = []
    for number, (budget, padding, instances, threads) in enumerate(candidates, 1):
        label = f"budget {budget}, padding {padding}, {instances} x {threads} threads"
        progress(f"[{number}/{len(candidates)}] {label}")
        options = BuildOptions(token_budget=budget, max_padding=padding, encoder_instances=instances,
                               threads=threads)
        repository = out / "repository"
        build_repository(checkpoint, repository, options, cache_dir)
        with TritonServer.on_free_ports(repository, log_file=out / "server.log") as server:
            run = served(server, texts, task, concurrency, 1, flops)
            memory = server_memory(server.process.pid)["total_mb"]
        summary = run.summary(1.0)
        rows.append({"token_budget": budget, "max_padding": padding, "instances": instances, "threads": threads,
                     "tokens_per_s": summary["tokens_per_s"], "p50_ms": summary["p50_ms"],
                     "padded_ratio": summary["padded_ratio"], "short_query_ms": summary["short_query_ms"],
                     "pss_mb": memory})
        progress(f"    {summary['tokens_per_s']} tokens/s, short query {summary['short_query_ms']} ms, {memory} MB")
    report = {"cpu": cpu_identity(), "checkpoint": checkpoint.label, "texts": count, "concurrency": concurrency,
              "short_query": SHORT_QUERY, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    (out / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    return rows


def sweep_markdown(rows: list[dict]) -> str:
    best = max(rows, key=lambda row: row["tokens_per_s"])
    lines = ["| token budget | padding | instances x threads | served tokens/s | short query ms | padded | PSS MB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        mark = " **(best)**" if row is best else ""
        lines.append(f"| {row['token_budget']} | {row['max_padding']} | {row['instances']} x {row['threads']} | "
                     f"{row['tokens_per_s']}{mark} | {row['short_query_ms']} | {row['padded_ratio']} | "
                     f"{row['pss_mb']} |")
    return "\n".join(lines) + "\n"
