"""The GPU check, one command: the `cuda` target on the real Triton, served parity, a throughput sweep.

On a machine with an NVIDIA GPU and torch but none of this project's environment
(`serving/gpu-check.sh` sets it up from a bundle made beforehand by `make gpu-bundle`):
  1. a SYNTHETIC full-size replica (random weights) with the real vocabulary;
  2. `build --target cuda` (fp16), Triton started on it (each encoder passes its parity gate or
     refuses to load);
  3. served parity over HTTP: 4 tasks x 2 input types x dims {32, 256, 768} x every output type
     against the reference path (transformers + peft, CPU fp32);
  4. a sweep on the mixed workload (half queries of 8-32 tokens, half documents of 100-512):
     the bare engine on packed texts, then the served ensemble at each concurrency with
     64-text requests: tokens/s, p50/p95, padded/real, served/engine;
  5. report.json and report.md under --out.
`--cpu` is the dry run CI does on the tiny replica (PyTorch fp32 on the CPU, the installed Triton).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jina_triton_client.contract import INPUT_TYPES, OUTPUTS, TASKS, TIMINGS, TOKEN_COUNT, ensemble_name

DIMENSIONS = (32, 256, 768)
REQUEST_TEXTS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.environ.get("OUT", "artifacts/gpu-check"),
                        help="report folder (default $OUT)")
    parser.add_argument("--bundle", help="folder from `make gpu-bundle`: Triton, a numpy<2 wheel, the tokenizer")
    parser.add_argument("--workdir", help="where to build (default: a new private folder under $TMPDIR; a fixed "
                                           "shared path could hold someone else's tritonserver or Python)")
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny replica, PyTorch fp32 on the CPU")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 16,64; --cpu: 2)")
    parser.add_argument("--seconds", type=float, default=None, help="per served step (default 20; --cpu: 3)")
    parser.add_argument("--texts", type=int, default=None, help="workload texts (default 4096; --cpu: 64)")


# -- the environment ---------------------------------------------------------------
def workdir_for(args) -> Path:
    """The given folder, or a fresh one only this user can enter (mode 0700)."""
    import tempfile

    if args.workdir:
        return Path(args.workdir)
    return Path(tempfile.mkdtemp(prefix="jina-gpu-check-"))

def prepare(bundle: Path | None, workdir: Path, log) -> Path | None:
    """With a bundle: unpack Triton (JINA_TRITON_HOME) and make the stubs' venv (numpy<2 first,
    this interpreter's packages after, through a .pth: the 3.12 stub ignores PYTHONPATH).
    Returns that venv, or None to run the stubs in this interpreter's environment."""
    if bundle is None:
        return None
    import subprocess
    import sysconfig

    root = workdir / "triton"
    if not (root / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        log(f"unpacking {bundle / 'triton.tar.xz'}")
        with tarfile.open(bundle / "triton.tar.xz") as archive:
            archive.extractall(root, filter="tar")
    os.environ["JINA_TRITON_HOME"] = str(root / "pytriton" / "tritonserver")
    venv = workdir / "stub-venv"
    if not (venv / "bin" / "python").exists():
        log("making the stubs' venv (numpy<2 from the bundle)")
        subprocess.run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "venv", str(venv)], check=True)
        wheels = sorted(bundle.glob("numpy-1.*.whl"))
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        str(wheels[-1])], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    sources = [str(Path(__file__).resolve().parents[2] / part) for part in ("client", "build", "serving",
                                                                            "model_repository")]
    here = sysconfig.get_paths()["purelib"]
    (site / "jina_triton_paths.pth").write_text(
        f"import sys; sys.path[:0] = {sources!r}; sys.path.append({here!r})\n")
    return venv


# -- the steps ---------------------------------------------------------------------
def parity_matrix(http, expected, texts: list[str]) -> tuple[list[dict], list[str]]:
    from .comparison import compare, within_tolerance

    rows, misses = [], []
    for task in TASKS:
        for input_type in INPUT_TYPES:
            for dims in DIMENSIONS:
                got = http.infer(ensemble_name(task), texts, list(OUTPUTS.values()) + [TOKEN_COUNT],
                                 {"input_type": input_type, "dimensions": dims})
                want = expected.floats(texts, task, input_type, dims, "END")
                report = compare(got, want, expected.calibration, expected.raw(texts, task, input_type, dims, "END"))
                counts_ok = got[TOKEN_COUNT][:, 0].tolist() == expected.token_counts(texts, input_type, "END").tolist()
                row = {"task": task, "input_type": input_type, "dimensions": dims, "token_counts_equal": counts_ok,
                       **{name: found for name, found in report.items()}}
                rows.append(row)
                missed = within_tolerance(report, expected.float_cosine) + ([] if counts_ok else ["token counts"])
                misses += [f"{task}/{input_type}/{dims}: {m}" for m in missed]
    return rows, misses


def _requests(texts, count: int = REQUEST_TEXTS) -> list[list]:
    return [texts[start:start + count] for start in range(0, len(texts), count)]


def bare_engine(folder: Path, precision: str, rows: list[list[int]], budget: int, seconds: float) -> dict:
    """The served encoder's own engine and packing, without Triton, on the same texts."""
    import torch

    from jina_triton_pipeline.packing import run_packed
    from jina_triton_pipeline.torch_engine import TorchEngine

    engine = TorchEngine(folder, precision)
    engine.warm_up(budget)
    batches = []
    for group in _requests(rows):
        longest = max(len(r) for r in group)
        ids = torch.zeros((len(group), longest), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(group):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        batches.append((ids, mask))
    run_packed(batches, budget, engine.forward, rows=engine.rows)  # warm: every shape of this workload once
    real = computed = 0
    passes = 0
    started = time.perf_counter()
    while passes == 0 or time.perf_counter() - started < seconds:
        packed = run_packed(batches, budget, engine.forward, rows=engine.rows)  # all requests queued at once
        real += packed.real_tokens
        computed += packed.computed_tokens
        passes += 1
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": round(real / elapsed, 1), "padded_ratio": round(computed / real, 3), "passes": passes,
            "device": str(engine.device), "precision": engine.precision}


def _encoder_tokens(metrics_url: str) -> dict:
    from .bench import token_totals

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        return token_totals(reply.read().decode())


def served(http, metrics_url: str, texts, concurrency: int, seconds: float) -> dict:
    requests = _requests(texts)
    latencies, tokens, errors = [], [0], [0]
    stop = time.perf_counter() + seconds

    def user(seed: int):
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            group = rng.choice(requests)
            started = time.perf_counter()
            try:
                got = http.infer(ensemble_name("retrieval"), [t.text for t in group], [OUTPUTS["float"], TOKEN_COUNT,
                                                                                     TIMINGS],
                                 {"input_type": group[0].input_type})
                tokens[0] += int(got[TOKEN_COUNT].sum())
                latencies.append((time.perf_counter() - started) * 1000)
            except Exception:  # noqa: BLE001 - counted, reported
                errors[0] += 1

    before = _encoder_tokens(metrics_url)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(user, range(concurrency)))
    elapsed = time.perf_counter() - started
    after = _encoder_tokens(metrics_url)
    lat = np.array(latencies or [np.nan])
    real = after["real"] - before["real"]
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors[0],
            "tokens_per_s": round(tokens[0] / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "padded_ratio": round((after["computed"] - before["computed"]) / real, 3) if real else None}


# -- the whole check ----------------------------------------------------------------
def run(args) -> int:
    import logging

    from jina_triton_build.checkpoint import open_checkpoint
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.reference import ReferenceEncoder
    from jina_triton_build.repository import build_repository
    from jina_triton_build.synth import write_synthetic_checkpoint
    from jina_triton_build.verification import verification_texts
    from jina_triton_pipeline.internals import encoder_name
    from jina_triton_pipeline.parity import GATES
    from jina_triton_pipeline.tokenization import TextTokenizer

    from .comparison import Expected
    from .http_client import HttpInfer
    from .server import TritonServer
    from .workload import Workload, token_counter

    log = logging.getLogger("jina_triton.gpu_check").info
    out, workdir = Path(args.out), workdir_for(args)
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    concurrency = [int(c) for c in (args.concurrency or ("2" if args.cpu else "16,64")).split(",")]
    seconds = args.seconds or (3.0 if args.cpu else 20.0)
    count = args.texts or (64 if args.cpu else 4096)
    started = time.perf_counter()
    timings = {}

    def step(name):
        timings[name] = round(time.perf_counter() - started, 1)
        log(f"[{timings[name]:7.1f} s] {name}")

    bundle = Path(args.bundle) if args.bundle else None
    stub_env = prepare(bundle, workdir, log)
    step("environment ready")
    tokenizer = str(bundle / "tokenizer.json") if bundle and (bundle / "tokenizer.json").is_file() else "real"
    checkpoint = open_checkpoint(write_synthetic_checkpoint(workdir / "checkpoint", "tiny" if args.cpu else "full",
                                                            tokenizer=tokenizer))
    step("synthetic replica written")
    reference = ReferenceEncoder(checkpoint)
    options = BuildOptions(target="cuda", precision=args.precision)
    build_repository(checkpoint, workdir / "repository", options, workdir / "cache", log, reference)
    options = options.resolved()
    step("cuda target built")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    precision = args.precision if gpu else "fp32"
    report = {"device": gpu or "CPU (no CUDA device: PyTorch fp32)", "precision": precision,
              "checkpoint": checkpoint.label, "torch": torch.__version__, "dry_run": args.cpu,
              "token_budget": options.token_budget, "queue_delay_us": options.queue_delay_us}
    texts = verification_texts() + ["emoji 🚀 and ünïcödé", "日本語のテキストです。"]
    workload = Workload(token_counter(checkpoint.path / "tokenizer.json"), 0).texts("mixed", count)
    encoder_tokenizer = TextTokenizer(checkpoint.path / "tokenizer.json", options.max_length)
    rows = [encoder_tokenizer.token_ids([t.text], t.input_type, "END")[0] for t in workload]
    server = TritonServer.on_free_ports(workdir / "repository", log_file=out / "triton.log", python_env=stub_env)
    failures = []
    with server:
        step("Triton ready (every encoder passed its parity gate)")
        http = HttpInfer(server.http_url)
        expected = Expected(reference, workdir / "repository", options.max_length)
        expected.float_cosine = GATES[precision]
        report["parity"], misses = parity_matrix(http, expected, texts)
        failures += misses
        report["parity_float_cosine_bar"] = GATES[precision]
        report["parity_min_float_cosine"] = min(row["float"]["min_cosine"] for row in report["parity"])
        step("served parity checked")
        folder = workdir / "repository" / encoder_name("retrieval") / "1"
        report["engine"] = bare_engine(folder, precision, rows, options.token_budget, seconds)
        budgets = (8192,) if args.cpu else (8192, 16384, 65536)  # to choose the GPU's budget by measurement
        report["engine_budgets"] = {budget: bare_engine(folder, precision, rows, budget, seconds / 2)["tokens_per_s"]
                                    for budget in budgets}
        step("bare engine measured")
        report["served"] = [served(http, server.metrics_url, workload, c, seconds) for c in concurrency]
        failures += [f"served at concurrency {s['concurrency']}: {s['errors']} errors" for s in report["served"]
                     if s["errors"]]
        for row in report["served"]:
            row["served_over_engine"] = round(row["tokens_per_s"] / report["engine"]["tokens_per_s"], 3)
        step("served sweep measured")
    report["workload"] = {"texts": count, "real_tokens": sum(len(r) for r in rows), "profile": "mixed"}
    report["steps_s"] = timings
    report["failures"] = failures
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if failures else 0


def markdown(report: dict) -> str:
    engine = report["engine"]
    lines = [f"## GPU check: {report['device']}, {report['precision']}", "", report["checkpoint"], "",
             f"Parity (served vs reference, 4 tasks x 2 input types x dims {DIMENSIONS} x every output): "
             f"min float cosine {report['parity_min_float_cosine']:.7f} (bar {report['parity_float_cosine_bar']}); "
             + ("all within tolerance" if not report["failures"] else "MISSES: " + "; ".join(report["failures"])),
             "", f"Bare engine ({engine['device']}, {engine['precision']}, budget {report['token_budget']}): "
             f"{engine['tokens_per_s']} real tokens/s, padded/real {engine['padded_ratio']}; other budgets: "
             + ", ".join(f"{b}: {t}" for b, t in report.get("engine_budgets", {}).items()), "",
             "| concurrency | requests | errors | tokens/s | p50 ms | p95 ms | padded/real | served/engine |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["served"]:
        lines.append(f"| {row['concurrency']} | {row['requests']} | {row['errors']} | {row['tokens_per_s']} | "
                     f"{row['p50_ms']} | {row['p95_ms']} | {row['padded_ratio']} | {row['served_over_engine']} |")
    lines += ["", "Steps (s since start): " + ", ".join(f"{k} {v}" for k, v in report["steps_s"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(prog="jina-triton gpu-check", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
