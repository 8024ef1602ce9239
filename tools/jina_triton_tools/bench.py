"""`make bench`: the served ensemble against the bare engine, the gateway and the reference path.

In one run, on the same texts:
  (a) engine     the bare onnxruntime engine on pre-tokenized texts, under every packing in
                 PACKINGS; the best one (chosen on one run of each, then timed afresh each
                 repeat) is the row, so it is the ceiling of this machine;
  (b) served     the Triton ensemble end to end through the project's gRPC client, at a
                 saturating concurrency;
  (c) gateway    the same requests through the OpenAI/Jina gateway (HTTP, base64 vectors);
  (d) reference  what a user of the official code runs: transformers + peft with the
                 adapter unmerged, batches of 32 in the given order.
Every run is repeated (`repeats`) and reported with its spread; a served run also says how busy
each part kept the cores (encoder stubs, preprocess, Triton, the load generator on the same
cores). Each row states its useful FLOP/s as a fraction of a matmul peak measured in the same
run: absolute CPU figures vary by host, the ratios hold. Speed is reported here, never asserted
in tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np

from jina_triton_client.contract import TRUNCATE_END
from jina_triton_build.engines import ENGINE_FILES
from jina_triton_pipeline.onnx_engine import ADAPTER_FILE, OnnxEngine, ort_session, serving_graph
from jina_triton_pipeline.heap import IDLE_S
from jina_triton_pipeline.internals import encoder_name
from jina_triton_pipeline.model_metrics import PASS_SECONDS_METRIC, PASSES_METRIC, TOKENS_METRIC
from jina_triton_pipeline.packing import MAX_PADDING, PASS_TOKENS, plan_chunks
from jina_triton_pipeline.pooling import cosines

from .machine import cpu_by_part, cpu_identity, encoder_flops, matmul_peaks, server_memory, versions
from .workload import Text, Workload, token_counter

SHORT_QUERY = "how do I reset my router?"
REPEATS_SHORT = 15
# (token budget, padding bound, padding allowed in tokens) per engine candidate; (0, 0, 0): one text per pass
PACKINGS = ((0, 0.0, 0), (1024, MAX_PADDING, PASS_TOKENS), (2048, MAX_PADDING, PASS_TOKENS),
            (4096, MAX_PADDING, PASS_TOKENS), (8192, MAX_PADDING, PASS_TOKENS))
# the same in as many engine processes as the served encoder has instances (the served packing, and
# without its allowance in tokens)
PROCESS_PACKINGS = ((0, 0.0, 0), (512, MAX_PADDING, PASS_TOKENS), (512, MAX_PADDING, 0),
                    (2048, MAX_PADDING, PASS_TOKENS))
SETTLE_S = 4 * IDLE_S  # "after load": the encoders hand their heap back once idle for IDLE_S
SUBSET_TASKS = "retrieval"  # the one-task server whose memory the report shows beside all four
# What the report puts beside this run: `make bench` before the shared backbone (issue 23's run on
# this machine kind: four merged exports, two instances of each encoder, token budget 8192)
PREVIOUS = {"memory_mb (fp32)": 9000, "cold start s": 360, "warm start s": 29,
            "engine short query ms (fp32)": 45, "served short query ms (fp32)": 94,
            "engine tokens/s (fp32)": 440, "served tokens/s (fp32)": 384, "served/engine (fp32)": 0.845,
            "served/engine (int8)": 0.79, "stub - engine short query ms (fp32)": 47}
SERVED_OVER_ENGINE = 0.95  # issue 23's target for served/engine tokens/s, both precisions
# Student's t for a two-sided 90 % interval, by degrees of freedom 1..10 (beyond: t90 below)
T90 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)
Z95 = 1.6449  # the normal's 95th percentile


def t90(dof: int) -> float:
    """Student's t for a two-sided 90 % interval: the table to 10 degrees of freedom, then the
    Cornish-Fisher series around the normal (within 0.001 of the exact value from 11 on)."""
    if dof <= len(T90):
        return T90[dof - 1]
    z = Z95
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


PER_REPEAT = ("short_query_ms", "in_stub_ms", "in_pass_ms", "gap_ms", "under_ms")


@dataclass
class Run:
    name: str
    texts: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    seconds: list = field(default_factory=list)      # one per repeat
    latencies_ms: list = field(default_factory=list)
    short_query_ms: float | None = None
    in_stub_ms: float | None = None                  # the encoder's own compute_infer per short query
    in_pass_ms: float | None = None                  # of which the engine's pass (the rest: the stub's work)
    gap_ms: float | None = None                      # short query minus the layer under it, paired (below)
    under_ms: float | None = None                    # the layer under it, in those same pairs
    flops: float = 0.0                               # useful work of one repeat
    note: str = ""
    samples: dict = field(default_factory=dict)      # each of PER_REPEAT's values by repeat; the median is kept
    sessions: dict = field(default_factory=dict)     # served: the first repeat's passes on each session
    memory: dict | None = None                       # served: the whole server's PSS as its load ends
    cores: dict = field(default_factory=dict)        # cores busy on average by part in the first repeat

    def absorb(self, other: "Run") -> "Run":
        """`other` as one more repeat of this run (the first repeat's latencies and tokens stay)."""
        if other is not self:
            self.seconds += other.seconds
        for name in PER_REPEAT:
            if getattr(other, name) is not None:
                self.samples.setdefault(name, []).append(getattr(other, name))
            if self.samples.get(name):
                setattr(self, name, statistics.median(self.samples[name]))
        return self

    def _encoder_cpu_per_1k(self) -> float | None:
        """CPU ms the encoders (the stubs, or the bare engine) spent per 1,000 real tokens, first repeat."""
        busy = self.cores.get("encoders", self.cores.get("engine"))
        if busy is None or not self.seconds or not self.real_tokens:
            return None
        return round(busy * self.seconds[0] / self.real_tokens * 1e6, 1)

    def summary(self, peak_gflops: float) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        best = statistics.median(self.seconds)
        spread = (max(self.seconds) - min(self.seconds)) / best if len(self.seconds) > 1 else None
        return {
            "texts": self.texts, "real_tokens": self.real_tokens, "computed_tokens": self.computed_tokens,
            "runs": len(self.seconds), "seconds": [round(s, 3) for s in self.seconds],
            "spread": None if spread is None else round(spread, 3),
            "tokens_per_s": round(self.real_tokens / best, 1),
            "texts_per_s": round(self.texts / best, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "padded_ratio": round(self.computed_tokens / self.real_tokens, 3) if self.real_tokens else None,
            "short_query_ms": None if self.short_query_ms is None else round(self.short_query_ms, 1),
            "in_stub_ms": None if self.in_stub_ms is None else round(self.in_stub_ms, 1),
            "in_pass_ms": None if self.in_pass_ms is None else round(self.in_pass_ms, 1),
            "gap_ms": None if self.gap_ms is None else round(self.gap_ms, 1),
            "under_ms": None if self.under_ms is None else round(self.under_ms, 1),
            "gflops": round(self.flops / best / 1e9, 1),
            "peak_fraction": round(self.flops / best / 1e9 / peak_gflops, 3),
            "cores": {part: round(busy, 2) for part, busy in self.cores.items()},
            "cores_total": len(os.sched_getaffinity(0)),
            "encoder_cpu_ms_per_1k_tokens": self._encoder_cpu_per_1k(),
            "note": self.note + _sessions_note(self.sessions) + _cores_note(self.cores),
        }


def _median_ms(call, repeats: int = REPEATS_SHORT) -> float:
    return statistics.median(_alternating_ms([call], repeats)[0])


def _alternating_ms(calls: list, repeats: int = REPEATS_SHORT) -> list[list[float]]:
    """Each call's times, the calls taken in turn `repeats` times (after one warm-up each): a host
    that drifts within the measurement moves them together, so their paired differences hold still."""
    for call in calls:
        call()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, taken in zip(calls, times):
            started = time.perf_counter()
            call()
            taken.append((time.perf_counter() - started) * 1000)
    return times


def _short_query_and_gap(run: "Run", call, under) -> None:
    """`run`'s short query, and its gap over `under` (the same query one layer down) as the median
    of paired differences: a lone short query drifts by several ms between moments on this kind of
    host, far more than a layer adds."""
    mine, theirs = _alternating_ms([call, under])
    run.short_query_ms, run.under_ms = statistics.median(mine), statistics.median(theirs)
    run.gap_ms = statistics.median(a - b for a, b in zip(mine, theirs))


def ratio_interval(paired: list[float]) -> tuple[float, float] | None:
    """A 90 % interval for the ratio the paired runs estimate (each run's served over the engine of
    its own repeat): Student's t on their logarithms, ends to 4 digits. None under two runs."""
    if len(paired) < 2:
        return None
    logs = np.log(np.asarray(paired, np.float64))
    half = t90(len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return round(float(np.exp(logs.mean() - half)), 4), round(float(np.exp(logs.mean() + half)), 4)


def verdict(interval: tuple[float, float], target: float) -> str:
    """Whether a run shows a ratio of at least `target`, given the noise between its repeats."""
    low, high = interval
    if low >= target:
        return "met"
    if high < target:
        return "not met"
    return "undecided at this noise (more repeats narrow it)"


# -- (a) the bare engine ---------------------------------------------------------
def _chunks(lengths: np.ndarray, budget: int, padding: float, tokens: int) -> list[np.ndarray]:
    if budget == 0:
        return [np.array([i]) for i in np.argsort(lengths, kind="stable")]
    return plan_chunks(lengths, budget, padding, tokens)


@dataclass
class EngineCandidate:
    label: str
    once: Callable[[], tuple[float, int, list]]   # seconds, computed tokens, each pass's ms
    sessions: dict = field(default_factory=dict)  # processes: the passes of the last run on each session
    cpu: dict = field(default_factory=dict)       # {"engine": CPU seconds of its last run}

    def note(self) -> str:
        return _sessions_note(self.sessions)


def _cores_note(cores: dict) -> str:
    if not cores:
        return ""
    busy = ", ".join(f"{part} {value:.2f}" for part, value in sorted(cores.items(), key=lambda kv: -kv[1]))
    return f"; cores busy on average: {busy}"


def _sessions_note(sessions: dict) -> str:
    narrow, passes = int(sessions.get("narrow", 0)), int(sum(sessions.values()))
    return f" ({narrow} of {passes} passes on one thread, beside another)" if passes else ""


def engine_candidates(engine, token_lists: list[list[int]], pooled: np.ndarray, layout: dict) -> list[EngineCandidate]:
    """Every way the bare engine runs these texts: one process on every packing of PACKINGS, writing
    its pooled states into `pooled`; then `layout["instances"]` processes sharing the cores as the
    served instances do (engine_processes.py) on the packings of PROCESS_PACKINGS."""
    from jina_triton_pipeline.tokenization import right_pad

    from .engine_processes import run_in_processes

    lengths = np.array([len(tokens) for tokens in token_lists])

    def alone(chunks, cpu: dict) -> tuple[float, int, list]:
        computed, latencies = 0, []
        cpu["engine"] = -time.process_time()
        started = time.perf_counter()
        for chunk in chunks:
            ids, mask = right_pad([token_lists[i] for i in chunk])
            chunk_started = time.perf_counter()
            pooled[chunk] = engine.forward(ids, mask)
            latencies.append((time.perf_counter() - chunk_started) * 1000)
            computed += ids.size
        seconds = time.perf_counter() - started
        cpu["engine"] += time.process_time()
        return seconds, computed, latencies

    def together(chunks, sessions: dict, cpu: dict) -> tuple[float, int, list]:
        passes = [[token_lists[i] for i in chunk] for chunk in chunks]
        seconds, counts, cpu["engine"] = run_in_processes(layout["graph"], layout["adapter"], engine.vocab_size,
                                                          passes, layout["instances"], layout["threads"],
                                                          layout["shared"])
        sessions.clear()
        sessions.update(counts)
        return seconds, sum(len(chunk) * int(lengths[chunk].max()) for chunk in chunks), []

    def packing(budget, padding, tokens):
        return (f"budget {budget}, padding <= {padding}{f' or {tokens} tokens' if tokens else ''}" if budget
                else "one text per pass")

    found = []
    for way in PACKINGS:
        cpu: dict = {}
        found.append(EngineCandidate(f"1 process, {packing(*way)}",
                                     lambda way=way, cpu=cpu: alone(_chunks(lengths, *way), cpu), cpu=cpu))
    for way in PROCESS_PACKINGS if layout["instances"] > 1 else ():
        sessions, cpu = {}, {}
        found.append(EngineCandidate(f"{layout['instances']} processes sharing the cores, {packing(*way)}",
                                     lambda way=way, sessions=sessions, cpu=cpu: together(
                                         _chunks(lengths, *way), sessions, cpu), sessions, cpu))
    return found


def _bare_short_query(engine, short: list[int]):
    ids = np.array([short])
    return lambda: engine.forward(ids, np.ones_like(ids))


def _engine_short_query(engine, short: list[int]) -> Run:
    run = Run("engine short query")
    run.short_query_ms = _median_ms(_bare_short_query(engine, short))
    return run


def rotated(items: list, by: int) -> list:
    """`items` rotated left `by` places: each repeat starts with the next one."""
    by %= max(1, len(items))
    return items[by:] + items[:by]


def _add_repeat(runs: dict, name: str, one: Run) -> None:
    runs[name] = runs.get(name, one).absorb(one)


# -- (b) served, (c) through the gateway ---------------------------------------------
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


def counter_totals(metrics_text: str, metric: str, label: str, model: str | None = None) -> dict[str, float]:
    """One counter of the encoders summed by one of its labels, from a Prometheus scrape (standard
    library only: the GPU check runs this where prometheus_client is not installed)."""
    import re

    totals: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(metric + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.rindex("}")]))
            if model is None or labels.get("model") == model:
                totals[labels[label]] = totals.get(labels[label], 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def token_totals(metrics_text: str, model: str | None = None) -> dict[str, float]:
    """The encoders' token counters: computed (padded) and real."""
    return {"computed": 0.0, "real": 0.0, **counter_totals(metrics_text, TOKENS_METRIC, "kind", model)}


def _encoder_counters(metrics_url: str) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {"tokens": token_totals(text), "passes": counter_totals(text, PASSES_METRIC, "session"),
            "seconds": counter_totals(text, PASS_SECONDS_METRIC, "session")}


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def _load(send, requests: list[list[Text]], concurrency: int, repeats: int, server, run: Run,
          others: dict[str, int] | None = None) -> Run:
    """`requests` from `concurrency` threads, `repeats` times; the first repeat's latencies, tokens,
    passes and CPU by part (the server's processes, this load generator, `others`) are kept."""
    cpu = {"load generator (the bench)": os.getpid(), **(others or {})}
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, requests[:concurrency]))  # warm every connection and instance
        for repeat in range(repeats):
            if repeat == 0:
                before, used = _encoder_counters(server.metrics_url), cpu_by_part(server.process.pid, cpu)
            started = time.perf_counter()
            latencies = list(pool.map(send, requests))
            run.seconds.append(time.perf_counter() - started)
            if repeat == 0:
                after = _encoder_counters(server.metrics_url)
                run.cores = {part: busy / run.seconds[-1] for part, busy in
                             _grown(used, cpu_by_part(server.process.pid, cpu)).items()}
                run.latencies_ms = latencies
                run.computed_tokens = int(after["tokens"]["computed"] - before["tokens"]["computed"])
                run.sessions = _grown(before["passes"], after["passes"])
    return run


def served(server, texts: list[Text], task: str, concurrency: int, repeats: int, flops: float,
           documents_per_request: int = 4, bare=None) -> Run:
    """`bare`: the bare engine's short query, to time in turn with the served one (gap_ms)."""
    from jina_triton_client import EmbeddingClient

    client = EmbeddingClient(server.grpc_url, timeout=600)  # keeps one connection per thread itself

    def send(group: list[Text]) -> float:
        started = time.perf_counter()
        client.embed([t.text for t in group], task=task, input_type=group[0].input_type)
        return (time.perf_counter() - started) * 1000

    run = Run("served", texts=len(texts), real_tokens=sum(t.tokens for t in texts), flops=flops)
    _load(send, _requests(texts, documents_per_request), concurrency, repeats, server, run)
    run.memory = server_memory(server.process.pid)  # before the encoders' idle trim
    time.sleep(1.0)  # zero load
    with EmbeddingClient(server.grpc_url) as single:
        before, counted = compute_infer(server, encoder_name(task)), _encoder_counters(server.metrics_url)
        query = lambda: single.embed([SHORT_QUERY], task=task, input_type="query")  # noqa: E731
        if bare is None:
            run.short_query_ms = _median_ms(query)
        else:
            _short_query_and_gap(run, query, bare)
        after, passes = compute_infer(server, encoder_name(task)), _encoder_counters(server.metrics_url)
    run.in_stub_ms = (after[1] - before[1]) / max(1, after[0] - before[0]) / 1e6
    count = sum(_grown(counted["passes"], passes["passes"]).values())
    if count:  # an encoder that counts its passes' time (the cpu target)
        run.in_pass_ms = sum(_grown(counted["seconds"], passes["seconds"]).values()) / count * 1000
    return run


def model_stats(server, model: str = "") -> list[dict]:
    """Triton's statistics of one model, or of every model (a restricted API: the admin key)."""
    path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
    request = urllib.request.Request(f"http://{server.http_url}{path}", headers=server.security.admin_headers())
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["model_stats"]


def compute_infer(server, model: str) -> tuple[int, int]:
    """(executions, ns) of a model's compute_infer so far, from Triton's statistics."""
    stats = model_stats(server, model)[0]["inference_stats"]["compute_infer"]
    return int(stats["count"]), int(stats["ns"])


def through_gateway(front, server, texts: list[Text], task: str, concurrency: int, repeats: int,
                    flops: float, documents_per_request: int = 4) -> Run:
    """The same requests as `served`, as OpenAI-shaped HTTP calls with base64 vectors; the short
    query timed in turn with the same query sent to Triton directly (gap_ms)."""
    from jina_triton_client import EmbeddingClient

    from .http_client import HttpInfer

    http = HttpInfer(front.url.split("://", 1)[1])

    def post(group: list[Text]) -> None:
        jina_task = ("retrieval.query" if group[0].input_type == "query" else "retrieval.passage") \
            if task == "retrieval" else task
        body = {"model": "jina-embeddings-v5-text-nano", "input": [t.text for t in group],
                "encoding_format": "base64", "task": jina_task}
        status, _, payload = http.post("/v1/embeddings", json.dumps(body).encode())
        if status != 200:
            raise RuntimeError(f"gateway answered {status}: {payload[:300]!r}")

    def send(group: list[Text]) -> float:
        started = time.perf_counter()
        post(group)
        return (time.perf_counter() - started) * 1000

    run = Run("gateway", texts=len(texts), real_tokens=sum(t.tokens for t in texts), flops=flops)
    _load(send, _requests(texts, documents_per_request), concurrency, repeats, server, run,
          {"gateway": front.process.pid})
    time.sleep(1.0)
    with EmbeddingClient(server.grpc_url) as direct:
        _short_query_and_gap(run, lambda: post([Text(SHORT_QUERY, "query", 0)]),
                             lambda: direct.embed([SHORT_QUERY], task=task, input_type="query"))
    return run


# -- (d) the reference path ------------------------------------------------------
def reference_path(reference, texts: list[Text], task: str, flops: float, batch_size: int = 32) -> Run:
    run = Run("reference", texts=len(texts), real_tokens=sum(t.tokens for t in texts), flops=flops)
    groups = {kind: [t.text for t in texts if t.input_type == kind] for kind in ("query", "document")}
    started = time.perf_counter()
    for kind, group in groups.items():
        for start in range(0, len(group), batch_size):
            batch = reference.tokenize(group[start:start + batch_size], kind)
            batch_started = time.perf_counter()
            reference.pooled(task, batch)
            run.latencies_ms.append((time.perf_counter() - batch_started) * 1000)
            run.computed_tokens += int(batch["input_ids"].numel())
    run.seconds.append(time.perf_counter() - started)
    run.short_query_ms = _median_ms(lambda: reference.encode([SHORT_QUERY], task, "query"), repeats=5)
    return run


# -- the whole run ---------------------------------------------------------------
def run_bench(checkpoint, out: Path, precisions=("fp32", "int8"), profile: str = "mixed", count: int = 128,
              concurrency: int = 8, task: str = "retrieval", cache_dir: Path | None = None, seed: int = 0,
              progress=print, repeats: int = 2, gateway: bool = True, cold: bool = True) -> dict:
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.reference import ReferenceEncoder
    from jina_triton_build.repository import build_repository
    from jina_triton_pipeline.internals import encoder_name
    from jina_triton_pipeline.tokenization import TextTokenizer

    from jina_triton_serving.gateway.process import GatewayProcess
    from jina_triton_serving.triton_process import TritonServer

    out.mkdir(parents=True, exist_ok=True)
    options = {p: BuildOptions(precision=p).resolved() for p in precisions}
    if cold:  # every engine of this run built from nothing, as `make serve` does on a fresh machine
        cache_dir = out / "cold-cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
    repositories, starts = {}, {}
    for precision in precisions:
        repositories[precision] = out / f"repository-{precision}"
        started = time.perf_counter()
        build_repository(checkpoint, repositories[precision], options[precision], cache_dir, progress)
        starts[precision] = {"build_s": round(time.perf_counter() - started, 1)}
    tokenizer_file = checkpoint.path / "tokenizer.json"
    tokenizer = TextTokenizer(tokenizer_file, options[precisions[0]].max_length)
    texts = Workload(token_counter(tokenizer_file), seed).texts(profile, count)
    rows = [tokenizer.token_ids([t.text], t.input_type, TRUNCATE_END)[0] for t in texts]
    short = tokenizer.token_ids([SHORT_QUERY], "query", TRUNCATE_END)[0]
    flops = encoder_flops(checkpoint.config, [len(r) for r in rows])
    vocabularies = compare_vocabularies(texts, sum(len(r) for r in rows), out)
    threads = options[precisions[0]].threads
    progress(f"measuring the fp32 matmul peak on {threads} threads")
    peaks = {"start": matmul_peaks(threads)}
    runs: dict[str, Run] = {}
    report = {"machine": {"cpu": cpu_identity(), "threads": threads,
                          **versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "checkpoint": checkpoint.label, "tokenizer": _tokenizer_label(checkpoint), "profile": profile,
              "texts": count, "task": task, "concurrency": concurrency, "repeats": repeats,
              "gflop_per_token": round(flops / sum(len(r) for r in rows) / 1e9, 4), "results": {}, "packings": {},
              "vocabularies": vocabularies}
    pooled, memory = {}, {}
    for precision in precisions:
        folder = repositories[precision] / encoder_name(task) / "1"
        graph = serving_graph(folder, ENGINE_FILES[precision])[0]
        engine = OnnxEngine(ort_session(graph, threads), int(checkpoint.config["vocab_size"]), folder / ADAPTER_FILE)
        layout = {"graph": graph, "adapter": folder / ADAPTER_FILE, "threads": threads,
                  "instances": options[precision].encoder_instances, "shared": not options[precision].fixed_threads}
        started = time.perf_counter()
        with contextlib.ExitStack() as held:
            server = held.enter_context(TritonServer.on_free_ports(repositories[precision],
                                                                   log_file=out / f"server-{precision}.log"))
            starts[precision]["ready_s"] = round(time.perf_counter() - started, 1)
            memory[precision] = {"idle": server_memory(server.process.pid)}
            pooled[precision] = np.zeros((len(rows), int(checkpoint.config["hidden_size"])), np.float32)
            candidates = engine_candidates(engine, rows, pooled[precision], layout)
            progress(f"(a) bare {precision} engine, {len(candidates)} ways to run it (the server up, idle)")
            measured = {candidate.label: candidate.once() for candidate in candidates}
            best = min(candidates, key=lambda candidate: measured[candidate.label][0])
            report["packings"][precision] = {label: round(sum(map(len, rows)) / seconds, 1)
                                             for label, (seconds, _, _) in measured.items()}
            engine_run = Run("engine", texts=len(rows), real_tokens=sum(map(len, rows)), flops=flops)
            engine_run.computed_tokens, engine_run.latencies_ms = measured[best.label][1:]
            front = held.enter_context(GatewayProcess(server, log_file=out / f"gateway-{precision}.log")) \
                if gateway else None
            # engine, served and gateway in turn each repeat (a host that drifts moves them together),
            # the order rotated from repeat to repeat (whichever runs first or last is not always the same)
            def engine_step(repeat):
                # timed afresh: the run that chose the best of several is the luckiest of them
                progress(f"(a) bare {precision} engine, the best way, run {repeat + 1} of {repeats}: {best.label}")
                engine_run.seconds.append(best.once()[0])
                if not repeat:
                    engine_run.cores = {part: busy / engine_run.seconds[0] for part, busy in best.cpu.items()}
                engine_run.absorb(_engine_short_query(engine, short))

            def served_step(repeat):
                progress(f"(b) served {precision} ensemble, run {repeat + 1} of {repeats}")
                one = served(server, texts, task, concurrency, 1, flops, bare=_bare_short_query(engine, short))
                _add_repeat(runs, f"served-{precision}", one)
                if not repeat:
                    memory[precision]["as the served load ends"] = one.memory

            def gateway_step(repeat):
                progress(f"(c) {precision} through the gateway, run {repeat + 1} of {repeats}")
                _add_repeat(runs, f"gateway-{precision}", through_gateway(front, server, texts, task, concurrency, 1,
                                                                          flops))

            steps = [engine_step, served_step] + ([gateway_step] if front is not None else [])
            for repeat in range(repeats):
                for step in rotated(steps, repeat):
                    step(repeat)
            engine_run.note = (f"best of {len(candidates)} (each run once to choose, then timed afresh each "
                               f"repeat): {best.label}{best.note()}")
            runs[f"engine-{precision}"] = engine_run
            time.sleep(SETTLE_S)
            memory[precision]["after load"] = server_memory(server.process.pid)
    if "fp32" in precisions:
        memory[f"fp32 --tasks {SUBSET_TASKS}"] = subset_memory(checkpoint, out, cache_dir, progress, texts)
    report["memory"], report["start"] = memory, starts
    progress("(d) reference path (transformers + peft, batch 32)")
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    runs["reference-fp32"] = reference_path(ReferenceEncoder(checkpoint), texts, task, flops)
    progress("measuring the fp32 matmul peak again (hosts drift)")
    peaks["end"] = matmul_peaks(threads)
    peak = max(value for measured in peaks.values() for value in measured.values())
    report["machine"].update(matmul_peak_gflops=round(peak, 1),
                             matmul_peaks={when: {lib: round(v, 1) for lib, v in measured.items()}
                                           for when, measured in peaks.items()})
    report["results"] = {name: run.summary(peak) for name, run in runs.items()}
    if "fp32" in pooled and "int8" in pooled:
        cosine = cosines(pooled["fp32"], pooled["int8"], pooled["fp32"].shape[1])
        report["int8_cosine_vs_fp32"] = {"mean": round(float(cosine.mean()), 5), "min": round(float(cosine.min()), 5)}
    report["ratios"] = ratios(report["results"], report.get("memory"), report.get("start"), cold, report["packings"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2))
    (out / f"bench-{stamp}.md").write_text(markdown(report))
    return report


def subset_memory(checkpoint, out: Path, cache_dir, progress, texts: list[Text]) -> dict:
    """Whole-server PSS of a repository of SUBSET_TASKS only, after a few of the workload's requests."""
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.repository import build_repository
    from jina_triton_client import EmbeddingClient
    from jina_triton_serving.triton_process import TritonServer

    progress(f"memory of a server of {SUBSET_TASKS} only")
    repository = out / "repository-fp32-subset"
    build_repository(checkpoint, repository, BuildOptions(tasks=SUBSET_TASKS), cache_dir, progress)
    with TritonServer.on_free_ports(repository, log_file=out / "server-subset.log") as server:
        with EmbeddingClient(server.grpc_url, timeout=600) as client:
            for group in _requests(texts, 4)[:16]:
                client.embed([t.text for t in group], task=SUBSET_TASKS.split(",")[0], input_type=group[0].input_type)
        time.sleep(SETTLE_S)
        return {"after load": server_memory(server.process.pid)}


def compare_vocabularies(texts: list[Text], tokens: int, out: Path) -> dict:
    """The same texts' tokens with the small corpus-trained BPE, beside the served vocabulary's."""
    from jina_triton_build.synth_tokenizer import write_tokenizer

    from .workload import token_counter

    folder = out / "small-bpe"
    folder.mkdir(exist_ok=True)
    if not (folder / "tokenizer.json").is_file():
        write_tokenizer(folder, "small")
    count = token_counter(folder / "tokenizer.json")
    small = sum(count([t.text], t.input_type)[0] for t in texts)
    return {"served": tokens, "small_bpe": small, "small_over_served": round(small / tokens, 3)}


def _tokenizer_label(checkpoint) -> str:
    info = checkpoint.config.get("jina_triton_synthetic", {})
    return info.get("tokenizer", "the checkpoint's own") if info else "the checkpoint's own"


def ratios(results: dict, memory: dict | None = None, starts: dict | None = None, cold: bool = True,
           packings: dict | None = None) -> dict:
    """name -> (value, target, the figure before the shared backbone or None)."""
    def tps(name):
        return (results.get(name) or {}).get("tokens_per_s")

    def ratio(top, bottom, digits=3):
        return round(tps(top) / tps(bottom), digits)

    found = {}
    for precision in ("fp32", "int8"):
        engine, serve, front = (results.get(f"{kind}-{precision}") for kind in ("engine", "served", "gateway"))
        if engine and serve:
            found[f"served/engine tokens/s ({precision})"] = (
                ratio(f"served-{precision}", f"engine-{precision}"), f">= {SERVED_OVER_ENGINE}",
                PREVIOUS.get(f"served/engine ({precision})"))
            paired = [bottom / top for top, bottom in zip(serve["seconds"], engine["seconds"])]
            if len(paired) > 1:  # each run's served against the engine of the same repeat: how far the noise reaches
                found[f"served/engine tokens/s, run by run ({precision})"] = (
                    ", ".join(f"{value:.3f}" for value in paired), "-", None)
                low, high = ratio_interval(paired)
                found[f"served/engine tokens/s, 90 % interval from the runs ({precision})"] = (
                    f"{low:.4f}-{high:.4f}: {verdict((low, high), SERVED_OVER_ENGINE)}", f">= {SERVED_OVER_ENGINE}",
                    None)
            alone = [tokens for label, tokens in (packings or {}).get(precision, {}).items() if label.startswith("1 ")]
            if alone:  # the ceiling the target was first set against: the best packing in one process
                found[f"served / best one-process engine tokens/s ({precision})"] = (
                    round(serve["tokens_per_s"] / max(alone), 3), ">= 0.95", None)
            found[f"served - engine short query ms, paired ({precision})"] = (
                serve["gap_ms"], "<= 10",
                PREVIOUS["served short query ms (fp32)"] - PREVIOUS["engine short query ms (fp32)"]
                if precision == "fp32" else None)
            bare = serve["under_ms"]  # the bare engine of the same pairs as the served short queries
            found[f"engine in the stub - bare engine, short query ms ({precision})"] = (
                round(serve["in_stub_ms"] - bare, 1), "~ 0",
                PREVIOUS["stub - engine short query ms (fp32)"] if precision == "fp32" else None)
            if serve.get("in_pass_ms") is not None:  # that gap split: the pass itself, the stub around it
                found[f"of that, the pass in the stub - the same pass bare, short query ms ({precision})"] = (
                    round(serve["in_pass_ms"] - bare, 1), "~ 0", None)
                found[f"of that, the stub's own work around the pass, short query ms ({precision})"] = (
                    round(serve["in_stub_ms"] - serve["in_pass_ms"], 1), "-", None)
            found[f"served padded-token ratio ({precision})"] = (serve["padded_ratio"], "<= 1.15", None)
            if serve.get("encoder_cpu_ms_per_1k_tokens") and engine.get("encoder_cpu_ms_per_1k_tokens"):
                found[f"encoder CPU per token, served stubs / engine ({precision})"] = (
                    round(serve["encoder_cpu_ms_per_1k_tokens"] / engine["encoder_cpu_ms_per_1k_tokens"], 3),
                    "~ 1", None)
                found[f"cores the encoder stubs had under load, of {serve['cores_total']} ({precision})"] = (
                    serve["cores"].get("encoders"), "-", None)
        if serve and front:
            found[f"gateway/served tokens/s ({precision})"] = (
                ratio(f"gateway-{precision}", f"served-{precision}"), ">= 0.95", None)
            found[f"gateway - served short query ms, paired ({precision})"] = (front["gap_ms"], "<= 3", None)
        if serve and results.get("reference-fp32"):
            found[f"served/reference tokens/s ({precision})"] = (
                ratio(f"served-{precision}", "reference-fp32", 2), ">= 3.0", None)
    if results.get("served-fp32"):
        found["served tokens/s (fp32)"] = (tps("served-fp32"), ">= 384", PREVIOUS["served tokens/s (fp32)"])
    if results.get("served-int8") and results.get("served-fp32"):
        found["int8/fp32 served tokens/s"] = (round(tps("served-int8") / tps("served-fp32"), 2), "speedup", None)
    limits = {"fp32": 2000, "int8": 1000, f"fp32 --tasks {SUBSET_TASKS}": 1200}
    for name, measured in (memory or {}).items():
        found[f"whole-server PSS after load, MB ({name})"] = (
            measured["after load"]["total_mb"], f"<= {limits.get(name)}",
            PREVIOUS["memory_mb (fp32)"] if name == "fp32" else None)
    if starts and "fp32" in starts:
        if cold:
            found["cold start s (empty engine cache -> ready, fp32)"] = (
                round(starts["fp32"]["build_s"] + starts["fp32"]["ready_s"], 1), "<= 120", PREVIOUS["cold start s"])
        found["warm start s (built repository -> ready, fp32)"] = (starts["fp32"]["ready_s"], "-",
                                                                   PREVIOUS["warm start s"])
    return found


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _peaks_text(peaks: dict) -> str:
    return "; ".join(f"{when}: " + ", ".join(f"{lib} {value}" for lib, value in measured.items())
                     for when, measured in peaks.items())


def markdown(report: dict) -> str:
    m, cpu = report["machine"], report["machine"]["cpu"]
    lines = [f"## Benchmark: {report['profile']} profile, {report['texts']} texts, task {report['task']}, "
             f"concurrency {report['concurrency']}, {report['repeats']} runs each (engine, served and gateway in "
             f"turn, the order rotated from run to run)",
             "", f"{report['checkpoint']}; tokenizer: {report['tokenizer']}", "",
             f"CPU: {cpu['model']} (family {cpu['family']}, model {cpu['model_id']}; {', '.join(cpu['flags']) or 'no'} "
             f"vector extensions), {cpu['cores']} cores; fp32 matmul peak on {m['threads']} threads: "
             f"{m['matmul_peak_gflops']} GFLOP/s, the best of torch and onnxruntime at the start and end of this run "
             f"({_peaks_text(m['matmul_peaks'])}); {report['gflop_per_token']} GFLOP per token "
             f"of this workload. Absolute CPU figures vary by host; the ratios hold.", "",
             f"Python {m['python']}, onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}, transformers "
             f"{m.get('transformers')}, Triton {m['triton']}; code {m.get('code', 'unknown')}; {m['date']}", "",
             "| run | tokens/s | spread | GFLOP/s | of peak | texts/s | p50 ms | p95 ms | padded | short query ms "
             "| over the layer under it, paired ms | in the stub ms | its pass ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        spread = "-" if r["spread"] is None else f"{100 * r['spread']:.1f} %"
        lines.append(f"| {name} | {r['tokens_per_s']} | {spread} | {r['gflops']} | {r['peak_fraction']:.2f} | "
                     f"{r['texts_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['padded_ratio']} | "
                     f"{r['short_query_ms']} | {_cell(r.get('gap_ms'))} | {_cell(r.get('in_stub_ms'))} | "
                     f"{_cell(r.get('in_pass_ms'))} |")
    for name, r in report["results"].items():
        if r.get("note"):
            lines.append(f"\n{name}: {r['note']}")
    for precision, tokens in report.get("packings", {}).items():
        lines.append(f"\nengine-{precision} packings (tokens/s): " + ", ".join(f"{k} {v}" for k, v in tokens.items()))
    lines += ["", "| measure | this run | before (issue 23's run) | target |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {'-' if before is None else before} | {target} |"
              for name, (value, target, before) in report["ratios"].items()]
    for name, measured in report.get("memory", {}).items():
        for when, found in measured.items():
            lines.append(f"\nPSS {name}, {when}: {found['total_mb']} MB (" +
                         ", ".join(f"{k} {v}" for k, v in found["by_process_mb"].items()) + ")")
    if "int8_cosine_vs_fp32" in report:
        c = report["int8_cosine_vs_fp32"]
        lines += ["", f"int8 vs fp32 embeddings on the same texts: cosine mean {c['mean']}, min {c['min']}"]
    if "vocabularies" in report:
        v = report["vocabularies"]
        lines += ["", f"Tokens of this workload: {v['served']} with the served tokenizer ({report['tokenizer']}), "
                      f"{v['small_bpe']} with the small corpus-trained BPE ({v['small_over_served']}x)"]
    return "\n".join(lines) + "\n"
