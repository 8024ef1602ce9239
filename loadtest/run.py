"""`make loadtest`: headless locust sweeps, a soak with memory sampling, fault runs, overload.

    python loadtest/run.py sweep    [--scenario S] [--users 1,4,16,64] [--step-seconds 30] [--protocol P]
    python loadtest/run.py soak     [--scenario S] [--users 8] [--minutes 10]
    python loadtest/run.py fault    --kind stub|restart [--users 8] [--seconds 60] [--at 15]
    python loadtest/run.py overload [--scenario S] [--users 8] [--step-seconds 60] [--gateway-concurrency 8]

overload measures the saturation rate (closed loop through the gateway), then sends an open
loop (Poisson arrivals) at 2x and 4x that rate: admitted requests keep a bounded p95, the rest
are refused with 429 at once, nothing is lost, the server stays up.

Without --url it builds and starts a server itself (--repository DIR, or a SYNTHETIC
replica of --preset tiny|full). Results go to --out, stamped with machine and
versions: per-step locust CSVs and HTML, events.jsonl, summary.json, sweep.png.
Exits non-zero if a request failed (any mode: a fault run too), a p95 bound broke,
or a request was lost (any mode): every request a user begins must end in one
event, answered or failed; the count of begun requests is written when locust quits.
An open-loop step whose generator sent less than 80 % of its rate is listed under
"caveats" (the load it measured is `sent_per_s`), not failed: that is the client's limit.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scenario import load_scenario  # noqa: E402

STOP_TIMEOUT_S = 120  # locust lets running requests finish this long after the end of a step
REFUSAL_MS = 50       # a refused request is told so at once
GENERATOR_SHORTFALL = 0.8  # an open-loop step that sent less than this of its rate says so (a caveat)


# -- the server under test --------------------------------------------------------
class Target:
    """A server given by URL, or one this run builds and owns (needed for fault runs)."""

    def __init__(self, args, out: Path):
        self.server = self.gateway = None
        if args.url:
            self.grpc, self.http, self.front = args.url, args.http_url, args.gateway_url
            return
        repository = Path(args.repository) if args.repository else self._build(args.preset, out)
        from jina_triton_serving.gateway.process import GatewayProcess
        from jina_triton_serving.triton_process import TritonServer

        self.server = TritonServer.on_free_ports(repository, log_file=out / "server.log")
        self.server.__enter__()
        self.grpc, self.http = self.server.grpc_url, f"http://{self.server.http_url}"
        self.gateway = GatewayProcess(self.server, "--max-concurrency", str(args.gateway_concurrency),
                                      log_file=out / "gateway.log").start()
        self.front = self.gateway.url

    @staticmethod
    def _build(preset: str, out: Path) -> Path:
        from jina_triton_build.repository import build_repository
        from jina_triton_build.synth import synthetic_checkpoint

        checkpoint = synthetic_checkpoint(out.parent / f"checkpoint-synthetic-{preset}", preset)
        repository = out.parent / f"repository-{preset}"
        build_repository(checkpoint, repository)
        return repository

    def alive(self) -> bool:
        """The server answers readiness (through the gateway when there is one)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.front or self.http}/{'ready' if self.front else 'v2/health/ready'}",
                                        timeout=10) as reply:
                return reply.status == 200
        except OSError:
            return False

    def restart(self) -> float:
        """Stop and start the owned server on the same ports; returns the downtime in seconds."""
        started = time.monotonic()
        self.server.stop()
        self.server.stop_requested = False
        self.server.__enter__()  # started, ready, supervised
        return time.monotonic() - started

    def kill_stub(self, model: str) -> int:
        """SIGKILL the Python-backend stub serving `model`; returns its pid."""
        import psutil

        for child in psutil.Process(self.server.process.pid).children(recursive=True):
            if "triton_python_backend_stub" in child.name() and any(model in part for part in child.cmdline()):
                child.send_signal(signal.SIGKILL)
                return child.pid
        raise RuntimeError(f"no stub process found for {model}")

    def processes(self):
        import psutil

        root = psutil.Process(self.server.process.pid)
        return [root] + root.children(recursive=True)

    def close(self):
        if self.gateway:
            self.gateway.stop()
        if self.server:
            self.server.__exit__(None, None, None)


# -- one locust run ---------------------------------------------------------------
CLASSES = {"grpc": ["TritonGrpcUser"], "http": ["TritonHttpUser"], "gateway": ["GatewayUser"],
           "both": ["TritonGrpcUser", "TritonHttpUser"], "all": ["TritonGrpcUser", "TritonHttpUser", "GatewayUser"]}


def locust_step(target: Target, args, users: int, seconds: float, prefix: Path, on_tick=None,
                classes: list[str] | None = None, extra: tuple = ()) -> dict:
    events = prefix.with_suffix(".events.jsonl")
    events.unlink(missing_ok=True)
    urls = [f"--grpc-url=grpc://{target.grpc}"] + ([f"--http-url={target.http}"] if target.http else []) + \
        ([f"--gateway-url={target.front}"] if target.front else [])
    command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
               "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "--stop-timeout", str(STOP_TIMEOUT_S),
               "--csv", str(prefix), "--html", str(prefix) + ".html", "--only-summary", "--loglevel", "WARNING",
               f"--scenario={args.scenario}", f"--events={events}", *urls, *extra,
               *(classes or CLASSES[args.protocol])]
    from jina_triton_serving.child_launch import guarded

    started = time.monotonic()
    process = subprocess.Popen(guarded(command), stdout=open(str(prefix) + ".log", "w"), stderr=subprocess.STDOUT)
    deadline = seconds + STOP_TIMEOUT_S + 60  # locust must be done by then, or it hangs
    killed = False
    while process.poll() is None:
        elapsed = time.monotonic() - started
        if on_tick:
            on_tick(elapsed)
        if elapsed > deadline:
            process.kill()
            killed = True
        time.sleep(0.5)
    return {**summarize(events, prefix, users, time.monotonic() - started), "killed_after_deadline": killed}


def summarize(events: Path, prefix: Path, users: int, wall: float) -> dict:
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.is_file() else []
    rows = [r for r in lines if "started" not in r]
    started = next((r["started"] for r in lines if "started" in r), None)
    ok = [r for r in rows if r["ok"]]
    refused = [r for r in rows if r.get("status") == 429]  # told at once to come back later
    failed = [r for r in rows if not r["ok"] and r.get("status") != 429]
    span = (max(r["t"] for r in rows) - min(r["t"] - r["ms"] / 1000 for r in rows)) if rows else 0.0
    latencies = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
    refusals = np.array([r["ms"] for r in refused]) if refused else np.array([np.nan])
    return {
        "users": users, "requests": len(rows), "failures": len(failed), "seconds": round(span, 2),
        "admitted": len(ok), "refused": len(refused),
        "refused_p99_ms": round(float(np.percentile(refusals, 99)), 1),
        "refused_max_ms": round(float(np.max(refusals)), 1),
        "requests_per_s": round(len(rows) / span, 2) if span else 0.0,
        "texts_per_s": round(sum(r["texts"] for r in ok) / span, 2) if span else 0.0,
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / span, 1) if span else 0.0,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "started": started, "lost": (started - len(rows)) if started is not None else None,
        "locust_request_count": _locust_request_count(Path(str(prefix) + "_stats.csv")),
        "errors": sorted({r["error"] for r in failed})[:10], "wall_seconds": round(wall, 1),
    }


def _locust_request_count(stats_csv: Path):
    import csv

    if not stats_csv.is_file():
        return None
    for row in csv.DictReader(stats_csv.open()):
        if row.get("Name") == "Aggregated":
            return int(row["Request Count"])
    return None


# -- modes ------------------------------------------------------------------------
def sweep(target, args, out) -> dict:
    steps = []
    for users in [int(u) for u in args.users.split(",")]:
        print(f"sweep: {users} users for {args.step_seconds} s", flush=True)
        steps.append(locust_step(target, args, users, args.step_seconds, out / f"step-{users:03d}"))
        print(json.dumps(steps[-1]), flush=True)
    _plot(steps, out / "sweep.png", args.scenario)
    return {"steps": steps}


def soak(target, args, out) -> dict:
    samples = []

    def sample(elapsed):
        if not samples or elapsed - samples[-1]["t"] >= 5:
            rss = sum(p.memory_info().rss for p in _alive(target.processes()))
            samples.append({"t": round(elapsed, 1), "rss_mb": round(rss / 2 ** 20, 1)})

    step = locust_step(target, args, int(args.users), args.minutes * 60, out / "soak", on_tick=sample)
    rows = [json.loads(line) for line in (out / "soak.events.jsonl").read_text().splitlines()]
    ends = sorted(r["t"] for r in rows if "started" not in r)

    def growth(since: float) -> dict:
        """RSS growth from `since` seconds to the end, per 1,000 requests finished in that window."""
        window = [s for s in samples if s["t"] >= since] or samples
        grown = window[-1]["rss_mb"] - window[0]["rss_mb"] if len(window) > 1 else 0.0
        finished = sum(1 for t in ends if t - ends[0] >= since) if ends else 0
        return {"from_s": round(since, 1), "rss_growth_mb": round(grown, 1), "requests": finished,
                "mb_per_1000_requests": round(grown / finished * 1000, 3) if finished else None}

    # memory allocators (onnxruntime's arena) grow in steps up to the largest shapes seen;
    # a leak keeps growing in the second half too
    return {"steps": [step], "memory_samples": samples,
            "after_warmup": growth(min(60.0, args.minutes * 15)),
            "second_half": growth(args.minutes * 30)}


def fault(target, args, out) -> dict:
    if not target.server:
        raise SystemExit("fault runs need a server this run owns: leave out --url")
    happened = {}

    def inject(elapsed):
        if elapsed >= args.at and "at" not in happened:
            happened["at"] = time.time()
            if args.kind == "stub":
                happened["pid"] = target.kill_stub(f"encoder_{args.model}")
            else:  # here, not in a thread: the server dies with the thread that started it
                happened["downtime_s"] = target.restart()

    step = locust_step(target, args, int(args.users), args.seconds, out / f"fault-{args.kind}", on_tick=inject)
    rows = [json.loads(line) for line in (out / f"fault-{args.kind}.events.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "started" not in r]
    after = [r for r in rows if r["t"] >= happened.get("at", float("inf"))]
    failed_after = [r for r in after if not r["ok"]]
    first_ok = min((r["t"] for r in after if r["ok"] and r["t"] - r["ms"] / 1000 >= happened["at"]), default=None)
    return {"steps": [step], "fault": args.kind, "fault_at_s": args.at,
            "stub_pid_killed": happened.get("pid"), "server_downtime_s": happened.get("downtime_s"),
            "failures_after_fault": len(failed_after),
            "recovery_s": None if first_ok is None else round(first_ok - happened["at"], 2),
            "answered_after_fault": len(after) - len(failed_after)}


def overload(target, args, out) -> dict:
    """Saturation rate in a closed loop, then open-loop arrivals at 2x and 4x it, through the gateway."""
    users = args.gateway_concurrency  # as many closed-loop users as the gateway admits: saturated, not refused
    print(f"overload: closed loop, {users} users, {args.step_seconds} s", flush=True)
    closed = locust_step(target, args, users, args.step_seconds, out / "saturation", classes=["GatewayUser"])
    rate = round(closed["admitted"] / closed["seconds"], 3) if closed["seconds"] else 1.0
    steps = [closed]
    for factor in (2, 4):
        print(f"overload: open loop at {factor}x {rate} = {factor * rate:.2f} requests/s", flush=True)
        step = locust_step(target, args, 1, args.step_seconds, out / f"open-{factor}x", classes=["OpenLoopGatewayUser"],
                           extra=(f"--arrival-rate={factor * rate}",))
        sent = round((step["started"] or 0) / args.step_seconds, 2)
        steps.append({**step, "factor": factor, "arrival_rate": round(factor * rate, 2), "sent_per_s": sent})
        print(json.dumps(steps[-1]), flush=True)
    return {"steps": steps, "saturation_requests_per_s": rate, "alive_after": target.alive()}


def _alive(processes):
    return [p for p in processes if p.is_running()]


def _plot(steps, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([s["p95_ms"] for s in steps], [s["tokens_per_s"] for s in steps], marker="o")
    for s in steps:
        axis.annotate(f"{s['users']} users", (s["p95_ms"], s["tokens_per_s"]), textcoords="offset points",
                      xytext=(5, 5))
    axis.set_xlabel("p95 latency (ms)")
    axis.set_ylabel("tokens/s")
    axis.set_title(f"throughput vs p95 latency — {title}")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("sweep", "soak", "fault", "overload"))
    parser.add_argument("--scenario", default="query_heavy")
    parser.add_argument("--protocol", choices=tuple(CLASSES), default="grpc")
    parser.add_argument("--url", help="gRPC HOST:PORT of a running server (default: start one)")
    parser.add_argument("--http-url", help="http://HOST:PORT of that server (for HTTP users)")
    parser.add_argument("--gateway-url", help="http://HOST:PORT of its gateway (for gateway users)")
    parser.add_argument("--gateway-concurrency", type=int, default=8,
                        help="the gateway's concurrent requests (more get 429) when this run starts it")
    parser.add_argument("--p95-bound", type=float, help="admitted p95 bound in ms (default: the scenario's)")
    parser.add_argument("--repository", help="model repository to serve (default: a synthetic --preset)")
    parser.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--users", default="1,4,16,64")
    parser.add_argument("--step-seconds", type=float, default=30)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kind", choices=("stub", "restart"), default="stub")
    parser.add_argument("--at", type=float, default=15, help="seconds into the fault run")
    parser.add_argument("--model", default="retrieval", help="task whose encoder stub the stub fault kills")
    parser.add_argument("--out", default="artifacts/loadtest")
    args = parser.parse_args(argv)

    scenario = load_scenario(args.scenario)
    out = Path(args.out) / f"{args.mode}-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    target = Target(args, out)
    try:
        result = {"sweep": sweep, "soak": soak, "fault": fault, "overload": overload}[args.mode](target, args, out)
    finally:
        target.close()
    from jina_triton_tools.machine import cpu_identity, versions

    bound = args.p95_bound or scenario.p95_ms_max
    problems = []
    for step in result["steps"]:
        if step["killed_after_deadline"]:
            problems.append(f"locust did not stop by itself at {step['users']} users and was killed")
        if step["lost"] is None or step["lost"]:
            problems.append(f"{step['lost']} request(s) lost (or unaccounted) at {step['users']} users")
        if step["failures"]:  # a fault (killed stub, restarted server) must cost no request either
            problems.append(f"{step['failures']} failed request(s) at {step['users']} users: {step['errors'][:3]}")
        if step["p95_ms"] > bound:
            problems.append(f"p95 {step['p95_ms']} ms > bound {bound} ms at {step['users']} users")
        if step["refused"] and step["refused_p99_ms"] > REFUSAL_MS:
            problems.append(f"refusals took {step['refused_p99_ms']} ms (p99) > {REFUSAL_MS} ms "
                            f"at {step['users']} users")
    # the load generator's shortfall says what a step measured, not that the server failed
    caveats = [f"the open-loop generator sent {step['sent_per_s']} requests/s of the {step['arrival_rate']} "
               f"asked at {step['factor']}x: that step measured a lower load (a generator sharing the "
               "server's cores falls behind; run it from another host with --url/--gateway-url)"
               for step in result["steps"]
               if "arrival_rate" in step and step["sent_per_s"] < GENERATOR_SHORTFALL * step["arrival_rate"]]
    if args.mode == "overload" and not result["alive_after"]:
        problems.append("the server was not ready after the overload")
    summary = {"mode": args.mode, "scenario": scenario.name, "protocol": args.protocol,
               "machine": {"cpu": cpu_identity(), **versions()},
               "server": "given" if args.url else "started by this run", **result, "problems": problems,
               "caveats": caveats}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "memory_samples"}, indent=2))
    for caveat in caveats:
        print(f"caveat: {caveat}", file=sys.stderr)
    print(f"results in {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
