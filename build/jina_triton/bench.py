"""`make bench`: the served ensemble against the bare engine and the reference path.

In one run, on the same texts:
  (a) engine     the bare onnxruntime engine on pre-tokenized, length-sorted batches
                 (the ceiling of this machine);
  (b) served     the Triton ensemble end to end through the project's client, at a
                 saturating concurrency;
  (c) reference  what a user of the official code runs: transformers + peft with the
                 adapter unmerged, batches of 32 in the given order.
Speed is reported here, never asserted in tests.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jina_triton_client.contract import TRUNCATE_END

from .checkpoint import Checkpoint
from .workload import Text, Workload, token_counter

SHORT_QUERY = "how do I reset my router?"
REPEATS = 15


@dataclass
class Run:
    name: str
    texts: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    seconds: float = 0.0
    latencies_ms: list = field(default_factory=list)
    short_query_ms: float | None = None

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "texts": self.texts, "real_tokens": self.real_tokens, "computed_tokens": self.computed_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.real_tokens / self.seconds, 1) if self.seconds else None,
            "texts_per_s": round(self.texts / self.seconds, 2) if self.seconds else None,
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "padded_ratio": round(self.computed_tokens / self.real_tokens, 3) if self.real_tokens else None,
            "short_query_ms": None if self.short_query_ms is None else round(self.short_query_ms, 1),
        }


def _median_ms(call, repeats: int = REPEATS) -> float:
    call()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# -- (a) the bare engine ---------------------------------------------------------
def bare_engine(engine: Path, tokenizer, texts: list[Text], token_budget: int, threads: int) -> tuple[Run, np.ndarray]:
    from jina_triton_pipeline.batching import plan_chunks

    from .engines import ort_session, pooled_from_session

    session = ort_session(engine, threads)
    rows = [tokenizer.token_ids([t.text], t.input_type, TRUNCATE_END)[0] for t in texts]
    lengths = np.array([len(r) for r in rows])
    run = Run("engine", texts=len(texts), real_tokens=int(lengths.sum()))
    pooled = np.zeros((len(texts), 0), np.float32)
    short = tokenizer([SHORT_QUERY], "query", TRUNCATE_END)
    pooled_from_session(session, short.input_ids, short.attention_mask)  # warm
    started = time.perf_counter()
    for chunk in plan_chunks(lengths, token_budget):
        batch = tokenizer.pad([rows[i] for i in chunk])
        chunk_started = time.perf_counter()
        out = pooled_from_session(session, batch.input_ids, batch.attention_mask)
        run.latencies_ms.append((time.perf_counter() - chunk_started) * 1000)
        if pooled.shape[1] == 0:
            pooled = np.zeros((len(texts), out.shape[1]), np.float32)
        pooled[chunk] = out
        run.computed_tokens += batch.input_ids.size
    run.seconds = time.perf_counter() - started
    run.short_query_ms = _median_ms(lambda: pooled_from_session(session, short.input_ids, short.attention_mask))
    return run, pooled


# -- (b) the served ensemble -----------------------------------------------------
def _requests(texts: list[Text], documents_per_request: int) -> list[list[Text]]:
    """Queries one per request (search traffic), documents in small groups (ingestion)."""
    requests, pending = [], []
    for text in texts:
        if text.input_type == "query":
            requests.append([text])
        else:
            pending.append(text)
            if len(pending) == documents_per_request:
                requests.append(pending)
                pending = []
    return requests + ([pending] if pending else [])


def _encoder_tokens(metrics_url: str) -> dict[str, float]:
    from jina_triton_pipeline.triton_adapter import token_totals

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        return token_totals(reply.read().decode())


def served(server, texts: list[Text], task: str, concurrency: int, documents_per_request: int = 4) -> Run:
    from jina_triton_client import EmbeddingClient

    requests = _requests(texts, documents_per_request)
    client = EmbeddingClient(server.grpc_url, timeout=600)  # keeps one connection per thread itself

    def send(group: list[Text]) -> float:
        started = time.perf_counter()
        client.embed([t.text for t in group], task=task, input_type=group[0].input_type)
        return (time.perf_counter() - started) * 1000

    metrics = f"http://{server.host}:{server.metrics_port}/metrics"
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, requests[:concurrency]))  # warm every connection and instance
        before = _encoder_tokens(metrics)
        started = time.perf_counter()
        latencies = list(pool.map(send, requests))
        seconds = time.perf_counter() - started
        after = _encoder_tokens(metrics)
    run = Run("served", texts=len(texts), real_tokens=sum(t.tokens for t in texts), seconds=seconds,
              latencies_ms=latencies, computed_tokens=int(after["computed"] - before["computed"]))
    time.sleep(1.0)  # zero load
    with EmbeddingClient(server.grpc_url) as single:
        run.short_query_ms = _median_ms(lambda: single.embed([SHORT_QUERY], task=task, input_type="query"))
    return run


# -- (c) the reference path ------------------------------------------------------
def reference_path(reference, texts: list[Text], task: str, batch_size: int = 32) -> Run:
    run = Run("reference", texts=len(texts), real_tokens=sum(t.tokens for t in texts))
    groups = {kind: [t.text for t in texts if t.input_type == kind] for kind in ("query", "document")}
    started = time.perf_counter()
    for kind, group in groups.items():
        for start in range(0, len(group), batch_size):
            batch = reference.tokenize(group[start:start + batch_size], kind)
            batch_started = time.perf_counter()
            reference.pooled(task, batch)
            run.latencies_ms.append((time.perf_counter() - batch_started) * 1000)
            run.computed_tokens += int(batch["input_ids"].numel())
    run.seconds = time.perf_counter() - started
    run.short_query_ms = _median_ms(lambda: reference.encode([SHORT_QUERY], task, "query"), repeats=5)
    return run


# -- the whole run ---------------------------------------------------------------
def machine() -> dict:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "triton": "2.51.0 (nvidia-pytriton 0.7.0)",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_bench(checkpoint: Checkpoint, out: Path, precisions=("fp32", "int8"), profile: str = "mixed",
              count: int = 64, concurrency: int = 8, task: str = "retrieval", cache_dir: Path | None = None,
              seed: int = 0, progress=print) -> dict:
    from jina_triton_pipeline.tokenization import TextTokenizer

    from .reference import ReferenceEncoder
    from .repository import RepositoryOptions, build_repository
    from .serve import TritonServer

    out.mkdir(parents=True, exist_ok=True)
    options = {p: RepositoryOptions(precision=p) for p in precisions}
    repositories = {}
    for precision in precisions:
        repositories[precision] = out / f"repository-{precision}"
        build_repository(checkpoint, repositories[precision], options[precision], cache_dir, progress)
    tokenizer = TextTokenizer(checkpoint.path / "tokenizer.json", options[precisions[0]].max_length)
    texts = Workload(token_counter(checkpoint.path / "tokenizer.json"), seed).texts(profile, count)
    report = {"machine": machine(), "checkpoint": checkpoint.label, "profile": profile, "texts": count,
              "task": task, "concurrency": concurrency, "results": {}}
    pooled = {}
    for precision in precisions:
        progress(f"(a) bare {precision} engine")
        engine = repositories[precision] / f"encoder_{task.replace('-', '_')}" / "1" / "model.onnx"
        run, pooled[precision] = bare_engine(engine, tokenizer, texts, options[precision].token_budget,
                                             options[precision].intra_op_threads)
        report["results"][f"engine-{precision}"] = run.summary()
        progress(f"(b) served {precision} ensemble")
        with TritonServer.on_free_ports(repositories[precision], log_file=out / f"server-{precision}.log") as server:
            report["results"][f"served-{precision}"] = served(server, texts, task, concurrency).summary()
    progress("(c) reference path (transformers + peft, batch 32)")
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    report["results"]["reference-fp32"] = reference_path(ReferenceEncoder(checkpoint), texts, task).summary()
    if "fp32" in pooled and "int8" in pooled:
        a = pooled["fp32"] / np.linalg.norm(pooled["fp32"], axis=1, keepdims=True)
        b = pooled["int8"] / np.linalg.norm(pooled["int8"], axis=1, keepdims=True)
        cosine = np.sum(a * b, axis=1)
        report["int8_cosine_vs_fp32"] = {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}
    report["ratios"] = ratios(report["results"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    (out / f"bench-{stamp}.md").write_text(markdown(report))
    return report


def ratios(results: dict) -> dict:
    def tps(name):
        return (results.get(name) or {}).get("tokens_per_s")

    found = {}
    for precision in ("fp32", "int8"):
        engine, serve = results.get(f"engine-{precision}"), results.get(f"served-{precision}")
        if engine and serve:
            found[f"served/engine tokens/s ({precision})"] = (round(tps(f"served-{precision}") / tps(f"engine-{precision}"), 3), ">= 0.90")
            found[f"served - engine short query ms ({precision})"] = (
                round(serve["short_query_ms"] - engine["short_query_ms"], 1), "<= 15")
            found[f"served padded-token ratio ({precision})"] = (serve["padded_ratio"], "<= 1.15")
        if serve and results.get("reference-fp32"):
            found[f"served/reference tokens/s ({precision})"] = (round(tps(f"served-{precision}") / tps("reference-fp32"), 2), ">= 3.0")
    if results.get("served-int8") and results.get("served-fp32"):
        found["int8/fp32 served tokens/s"] = (round(tps("served-int8") / tps("served-fp32"), 2), "speedup")
    return found


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"## Benchmark: {report['profile']} profile, {report['texts']} texts, task {report['task']}, "
             f"concurrency {report['concurrency']}",
             "", f"{report['checkpoint']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, onnxruntime {m['onnxruntime']}, "
             f"torch {m['torch']}, transformers {m['transformers']}, Triton {m['triton']}; {m['date']}", "",
             "| run | tokens/s | texts/s | p50 ms | p95 ms | p99 ms | padded ratio | short query ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['tokens_per_s']} | {r['texts_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['p99_ms']} | {r['padded_ratio']} | {r['short_query_ms']} |")
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, (value, target) in report["ratios"].items()]
    if "int8_cosine_vs_fp32" in report:
        c = report["int8_cosine_vs_fp32"]
        lines += ["", f"int8 vs fp32 embeddings on the same texts: cosine mean {c['mean']}, min {c['min']}"]
    return "\n".join(lines) + "\n"
