"""The GPU check, one command: the `cuda` target on the real Triton, served parity, a throughput sweep.

On a machine with an NVIDIA GPU and torch but none of this project's environment
(`tools/gpu-check.sh` runs it from a copy of the tree and a bundle made beforehand by
`make gpu-bundle`):
  1. environment  Triton unpacked; two stub environments made without pip: numpy<2 (the
                  bundle's wheel) for the models that move numpy arrays and BYTES, the machine's
                  own packages (numpy 2, torch) for the torch encoders, which use DLPack only;
  2. replica      a SYNTHETIC full-size replica (random weights) with the real vocabulary;
  3. build        `build --target cuda` (fp16): reference parity per task, calibration;
  4. triton       the real Triton on it (every encoder passes its parity gate or refuses to load);
  5. numpy        which numpy each stub loaded (from /proc/<pid>/maps);
  6. parity       served vs reference over HTTP, 4 tasks x 2 input types x dims {32, 256, 768} x
                  every output, precision-aware (see comparison.py);
  7. engine       the bare engine on the mixed workload, packed as served; again with its requests
                  in a new order each round (new pass shapes, as served traffic has), and on a GPU
                  that way with cuDNN attention allowed (what the served engine turns off);
  8. served       the ensemble at each concurrency with 64-text requests (one task, then all four
                  at once): tokens/s, p50/p95, padded/real, served/engine, and where the time went
                  (stage_profile.py; with --sample-stacks, every stub's Python stacks too);
  9. compiled     (GPU only) the bare engine again through torch.compile over length buckets.
With --compiled-encoders the served encoders are built with those buckets (compile_buckets) and
the engine step measures the bare engine compiled the same way, so served/engine compares like
with like (step 9 is then the engine step itself).
report.json and report.md are rewritten after every step; each step has its own time bound
and the whole check a deadline (both end it with the report written and exit code 3).
`--cpu` runs the same steps on the tiny replica with PyTorch on the CPU (bf16 if asked: the
CPU has bf16 kernels, not fp16 ones): the box emulation CI runs (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jina_triton_client.contract import INPUT_TYPES, OUTPUTS, TASKS, TIMINGS, TOKEN_COUNT, ensemble_name

DIMENSIONS = (32, 256, 768)
REQUEST_TEXTS = 64
# seconds per step on a GPU machine (the dry run on 2 CPU cores gets 3x); all of them well under
# the device's 600 s per call only together with --deadline
STEP_SECONDS = {"environment": 90, "replica": 60, "build": 150, "triton": 150, "numpy": 20, "parity": 90,
                "engine": 120, "served": 150, "compiled": 200}
COMPILE_BUCKETS = (64, 256, 512)   # the mixed workload: queries of 8-32 tokens, documents of 100-512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=os.environ.get("OUT", "artifacts/gpu-check"),
                        help="report folder (default $OUT)")
    parser.add_argument("--bundle", help="folder from `make gpu-bundle`: Triton, a numpy<2 wheel, the tokenizer")
    parser.add_argument("--workdir", help="where to build (default: a new private folder under $TMPDIR; a fixed "
                                           "shared path could hold someone else's tritonserver or Python)")
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny replica, PyTorch on the CPU")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--concurrency", default=None, help="comma-separated (default 16,64; --cpu: 2)")
    parser.add_argument("--seconds", type=float, default=None, help="per served step (default 20; --cpu: 3)")
    parser.add_argument("--texts", type=int, default=None, help="workload texts (default 4096; --cpu: 64)")
    parser.add_argument("--deadline", type=float, default=480, help="seconds for the whole check")
    parser.add_argument("--skip", action="append", default=[], choices=("compiled",),
                        help="a step to leave out: compiled (the slowest)")
    parser.add_argument("--compiled-encoders", action="store_true",
                        help=f"serve the encoders through torch.compile over length buckets {COMPILE_BUCKETS} "
                             "(build option compile_buckets); the bare engine is then measured compiled too")
    parser.add_argument("--sample-stacks", action="store_true",
                        help="sample every stub's Python stacks to OUT/stacks (stub_sampler.py; needs a bundle)")
    parser.add_argument("--fail-at", choices=tuple(STEP_SECONDS), help="fail on purpose at this step (tests the "
                                                                       "report written up to it)")


def workdir_for(args) -> Path:
    """The given folder, or a fresh one only this user can enter (mode 0700)."""
    import tempfile

    if args.workdir:
        return Path(args.workdir)
    return Path(tempfile.mkdtemp(prefix="jina-gpu-check-"))


class CheckFailed(RuntimeError):
    pass


class Report:
    """What the check found so far, on disk after every step: a late failure loses nothing."""

    def __init__(self, out: Path, scale: float, deadline: float):
        self.out, self.scale = out, scale
        self.data: dict = {"steps": {}, "failures": []}
        self.started = time.perf_counter()
        self._timer = threading.Timer(deadline, self._expired, ("the whole check", deadline))
        self._timer.daemon = True
        self._timer.start()

    def write(self) -> None:
        partial = self.out / "report.json.partial"
        partial.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(partial, self.out / "report.json")
        (self.out / "report.md").write_text(markdown(self.data))

    def _expired(self, name: str, seconds: float) -> None:
        self.data["failures"].append(f"{name}: not done within {seconds:.0f} s")
        self.write()
        print(f"gpu-check: {name} took longer than {seconds:.0f} s; report in {self.out}", file=sys.stderr, flush=True)
        os._exit(3)  # Triton and its stubs die with us (PR_SET_PDEATHSIG)

    def bound(self, name: str, factor: float = 1.0) -> float:
        """Seconds step `name` may take on this machine (`factor`: a step that also compiles)."""
        return STEP_SECONDS[name] * self.scale * factor

    def step(self, name: str, fail_at: str | None = None, factor: float = 1.0):
        report = self

        class Step:
            def __enter__(self):
                self.begun = time.perf_counter()
                bound = report.bound(name, factor)
                self.timer = threading.Timer(bound, report._expired, (f"step {name}", bound))
                self.timer.daemon = True
                self.timer.start()
                if fail_at == name:
                    raise CheckFailed(f"step {name}: failed on purpose (--fail-at)")
                return self

            def __exit__(self, kind, error, trace):
                self.timer.cancel()
                report.data["steps"][name] = {"seconds": round(time.perf_counter() - self.begun, 1),
                                              "ok": kind is None}
                if kind is not None:
                    report.data["failures"].append(f"step {name}: {error}")
                report.write()
                print(f"[{time.perf_counter() - report.started:7.1f} s] {name}: {'done' if kind is None else error}",
                      flush=True)
                return False

        return Step()

    def close(self) -> None:
        self._timer.cancel()
        self.write()


# -- the environment ---------------------------------------------------------------
def prepare(bundle: Path | None, workdir: Path) -> tuple[Path | None, str]:
    """With a bundle: Triton unpacked (JINA_TRITON_HOME) and the two stub environments; returns the
    server's environment (torch side) and the numpy<2 one. Without: this interpreter's, and none."""
    if bundle is None:
        return None, ""
    import sysconfig

    from jina_triton_build.stub_env import make_stub_env

    root = workdir / "triton"
    if not (root / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        with tarfile.open(bundle / "triton.tar.xz") as archive:  # the filter argument came with 3.11.4
            archive.extractall(root, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    os.environ["JINA_TRITON_HOME"] = str(root / "pytriton" / "tritonserver")
    sources = [str(Path(p).resolve()) for p in sys.path if (Path(p) / "jina_triton_pipeline").is_dir()][:1]
    if not sources:
        raise CheckFailed("jina_triton_pipeline is not importable: run through tools/gpu-check.sh")
    here = sysconfig.get_paths()["purelib"]
    wheels = sorted(bundle.glob("numpy-1.*.whl"))
    if not wheels:
        raise CheckFailed(f"{bundle} has no numpy 1.x wheel: make the bundle again (make gpu-bundle)")
    torch_env = make_stub_env(workdir / "env-torch", first=sources, after=[here])
    numpy_env = make_stub_env(workdir / "env-numpy1", wheels=[wheels[-1]], first=sources, after=[here])
    return torch_env, str(numpy_env)


def sample_stacks(folder: Path, *envs) -> dict[str, str]:
    """Every stub of the check's Triton samples its own stacks (stub_sampler.py) into `folder`."""
    from jina_triton_build.stub_env import site_packages

    from .stub_sampler import PTH_LINE, PTH_NAME

    if not all(envs):
        raise CheckFailed("--sample-stacks needs the stub environments of a bundle")
    for env in envs:
        (site_packages(Path(env)) / PTH_NAME).write_text(PTH_LINE)
    return {"JINA_CHECK_STACKS": str(folder.resolve())}


def pip_inside(*envs) -> bool:
    """Whether any stub environment carries pip (it must not need one: made without ensurepip)."""
    from jina_triton_build.stub_env import site_packages

    return any((site_packages(Path(env)) / "pip").is_dir() for env in envs if env)


def stub_numpy(server) -> dict[str, str]:
    """model -> the numpy its stubs loaded: 1.x has numpy/core/, 2.x numpy/_core/ (from /proc/<pid>/maps)."""
    found = {}
    for (model, _), pids in server.stub_pids().items():
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            line = next((line for line in maps.splitlines() if "_multiarray_umath" in line), None)
            if line:
                path = line.split()[-1]
                found[model] = ("2" if "/numpy/_core/" in path else "1") + " " + path.split("/numpy/")[0]
    return found


def check_numpy(found: dict[str, str], split: bool) -> list[str]:
    """With two environments: numpy 1 where BYTES and numpy arrays move, the machine's numpy
    (2 on the GPU box) in the torch encoders."""
    if not split:
        return []
    here = np.__version__.split(".")[0]
    problems = [f"{model} runs numpy {seen}" for model, seen in found.items()
                if model.startswith("encoder_") and not seen.startswith(here)]
    problems += [f"{model} runs numpy {seen}" for model, seen in found.items()
                 if not model.startswith("encoder_") and not seen.startswith("1")]
    return problems + ([] if found else ["no stub's numpy found"])


# -- the steps ---------------------------------------------------------------------
def parity_matrix(http, expected, texts: list[str], precision: str) -> tuple[list[dict], list[str]]:
    from .comparison import compare

    rows, misses = [], []
    for task in TASKS:
        for input_type in INPUT_TYPES:
            for dims in DIMENSIONS:
                got = http.infer(ensemble_name(task), texts, list(OUTPUTS.values()) + [TOKEN_COUNT],
                                 {"input_type": input_type, "dimensions": dims})
                want = expected.floats(texts, task, input_type, dims, "END")
                found = compare(got, want, expected.tables, expected.raw(texts, task, input_type, dims, "END"),
                                precision)
                counts_ok = got[TOKEN_COUNT][:, 0].tolist() == expected.token_counts(texts, input_type, "END").tolist()
                rows.append({"task": task, "input_type": input_type, "dimensions": dims,
                             "token_counts_equal": counts_ok, **found})
                missed = found["misses"] + ([] if counts_ok else ["token counts"])
                misses += [f"{task}/{input_type}/{dims}: {m}" for m in missed]
    return rows, misses


def packing_plan(lengths: list[int], rows_per_execute: int, budget: int, padding: float) -> dict:
    """How the served packing cuts this workload (no GPU needed): passes and padded/real."""
    from jina_triton_pipeline.packing import plan_chunks

    lengths = np.array(lengths)
    passes = padded = 0
    for start in range(0, len(lengths), rows_per_execute):
        part = lengths[start:start + rows_per_execute]
        chunks = plan_chunks(part, budget, padding)
        passes += len(chunks)
        padded += sum(len(c) * int(part[c].max()) for c in chunks)
    return {"rows_per_execute": rows_per_execute, "budget": budget, "max_padding": padding,
            "passes_per_1k_rows": round(1000 * passes / len(lengths), 1),
            "padded_over_real": round(padded / int(lengths.sum()), 3), "tokens_per_pass": round(padded / passes)}


def _requests(texts, count: int = REQUEST_TEXTS) -> list[list]:
    return [texts[start:start + count] for start in range(0, len(texts), count)]


def bare_engine(folder: Path, precision: str, rows: list[list[int]], options, seconds: float,
                buckets: tuple[int, ...] = (), shuffled: bool = False, cudnn_attention: bool = False) -> dict:
    """The served encoder's own engine and packing, without Triton, on the same texts: requests of
    64 texts meeting `encoder_max_rows` rows per execute, as the batcher hands them over. The same
    executes every round (their shapes warmed once), or `shuffled`: requests met in a new order each
    round, so that passes have shapes not seen before, as served traffic has."""
    import torch

    from jina_triton_pipeline.packing import run_packed
    from jina_triton_pipeline.tokenization import right_pad
    from jina_triton_pipeline.torch_engine import TorchEngine

    loaded = time.perf_counter()
    engine = TorchEngine(folder, precision, compile_buckets=buckets, cudnn_attention=cudnn_attention)
    engine.warm_up(options.token_budget)
    load_seconds = time.perf_counter() - loaded
    warmed_graphs = engine.graphs
    requests = [tuple(torch.from_numpy(a) for a in right_pad(group)) for group in _requests(rows)]
    per_execute = max(1, options.encoder_max_rows // REQUEST_TEXTS)
    rng = random.Random(0)

    def cut() -> list[list]:
        return [requests[i:i + per_execute] for i in range(0, len(requests), per_execute)]

    executes = cut()

    def everything():
        real = computed = 0
        if shuffled:
            rng.shuffle(requests)
            executes[:] = cut()
        for batch in executes:
            packed = run_packed(batch, options.token_budget, engine.forward, passes=engine.passes,
                                max_padding=options.max_padding)
            real, computed = real + packed.real_tokens, computed + packed.computed_tokens
        return real, computed

    everything()  # warm: every shape of this workload once
    real = computed = passes = 0
    started = time.perf_counter()
    while passes == 0 or time.perf_counter() - started < seconds:
        done = everything()
        real, computed, passes = real + done[0], computed + done[1], passes + 1
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": round(real / elapsed, 1), "padded_ratio": round(computed / real, 3), "rounds": passes,
            "device": str(engine.device), "precision": engine.precision, "compiled": list(buckets),
            "shuffled": shuffled, "cudnn_attention": cudnn_attention, "load_and_warm_up_s": round(load_seconds, 1),
            "graphs_after_warm_up": (engine.graphs - warmed_graphs) if engine.compiled else None}


def compiled_while_serving(log: Path, since: int) -> int:
    """Graphs the served encoders compiled after their load: their warnings in Triton's log, from
    byte `since` on (the log is appended to: an earlier run's lines stay in it)."""
    from jina_triton_pipeline.torch_engine import count_compiled_while_serving

    with open(log, "rb") as lines:
        lines.seek(since)
        return count_compiled_while_serving(lines.read().decode(errors="replace"))


def served(http, server, texts, concurrency: int, seconds: float, tasks=("retrieval",)) -> dict:
    """Closed-loop users sending 64-text requests; with several tasks, each request goes to a random
    one: four encoder stubs then share the GPU, which is what decides between one stub per task
    and one stub holding every task's weights."""
    requests = _requests(texts)
    latencies, tokens, errors = [], [0], [0]
    stop = time.perf_counter() + seconds

    def user(seed: int):
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            group = rng.choice(requests)
            started = time.perf_counter()
            try:
                got = http.infer(ensemble_name(rng.choice(tasks)), [t.text for t in group],
                                 [OUTPUTS["float"], TOKEN_COUNT, TIMINGS], {"input_type": group[0].input_type})
                tokens[0] += int(got[TOKEN_COUNT].sum())
                latencies.append((time.perf_counter() - started) * 1000)
            except Exception:  # noqa: BLE001 - counted, reported
                errors[0] += 1

    from .stage_profile import Snapshot, stages

    before = Snapshot.take(server)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(user, range(concurrency)))
    elapsed = time.perf_counter() - started
    after = Snapshot.take(server)
    lat = np.array(latencies or [np.nan])
    real = after.tokens["real"] - before.tokens["real"]
    return {"concurrency": concurrency, "tasks": len(tasks), "requests": len(latencies), "errors": errors[0],
            "tokens_per_s": round(tokens[0] / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "padded_ratio": round((after.tokens["computed"] - before.tokens["computed"]) / real, 3) if real else None,
            "stages": stages(before, after)}


# -- the whole check ----------------------------------------------------------------
def run(args) -> int:
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
    from jina_triton_serving.triton_process import TritonServer
    from .workload import Workload, token_counter

    out, workdir = Path(args.out), workdir_for(args)
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    concurrency = [int(c) for c in (args.concurrency or ("2" if args.cpu else "16,64")).split(",")]
    seconds = args.seconds or (3.0 if args.cpu else 20.0)
    count = args.texts or (64 if args.cpu else 4096)
    report = Report(out, 3.0 if args.cpu else 1.0, args.deadline)
    data = report.data
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    precision = args.precision if gpu or args.precision == "bf16" else "fp32"
    data.update({"device": gpu or f"CPU (no CUDA device: PyTorch {precision})", "precision": precision,
                 "torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
                 "dry_run": args.cpu, "parity_float_cosine_bar": GATES[precision]})
    bundle = Path(args.bundle) if args.bundle else None
    try:
        with report.step("environment", args.fail_at):
            stub_env, numpy_env = prepare(bundle, workdir)
            data["environments"] = {"server (torch side)": str(stub_env or sys.prefix), "numpy<2 models": numpy_env,
                                    "pip inside": pip_inside(stub_env, numpy_env)}
            server_env = sample_stacks(workdir / "stacks", stub_env, numpy_env) if args.sample_stacks else {}
        with report.step("replica", args.fail_at):
            tokenizer = str(bundle / "tokenizer.json") if bundle and (bundle / "tokenizer.json").is_file() else "real"
            preset = "tiny" if args.cpu else "full"
            written = write_synthetic_checkpoint(workdir / "checkpoint", preset, tokenizer=tokenizer)
            checkpoint = open_checkpoint(written)
            data["checkpoint"] = checkpoint.label
        with report.step("build", args.fail_at):
            reference = ReferenceEncoder(checkpoint)
            buckets = COMPILE_BUCKETS if args.compiled_encoders else ()
            options = BuildOptions(target="cuda", precision=args.precision, numpy_env=numpy_env,
                                   compile_buckets=",".join(map(str, buckets)))
            build_repository(checkpoint, workdir / "repository", options, workdir / "cache", None, reference)
            options = options.resolved()
            data["options"] = {name: getattr(options, name) for name in (
                "token_budget", "max_padding", "encoder_max_rows", "queue_delay_us", "preprocess_instances",
                "postprocess_instances", "compile_buckets")}
        texts = verification_texts() + ["emoji 🚀 and ünïcödé", "日本語のテキストです。"]
        workload = Workload(token_counter(checkpoint.path / "tokenizer.json"), 0).texts("mixed", count)
        encoder_tokenizer = TextTokenizer(checkpoint.path / "tokenizer.json", options.max_length)
        rows = [encoder_tokenizer.token_ids([t.text], t.input_type, "END")[0] for t in workload]
        data["workload"] = {"texts": count, "real_tokens": sum(len(r) for r in rows), "profile": "mixed"}
        data["packing"] = [packing_plan([len(r) for r in rows], per, options.token_budget, bound)
                           for per in (REQUEST_TEXTS, options.encoder_max_rows)
                           for bound in (1.10, options.max_padding)]
        log = out / "triton.log"
        log_start = log.stat().st_size if log.is_file() else 0
        server = TritonServer.on_free_ports(workdir / "repository", log_file=log,
                                            python_env=stub_env, env=server_env)
        try:
            load_factor = 2.0 if buckets else 1.0  # every encoder stub compiles its buckets while loading
            with report.step("triton", args.fail_at, load_factor):
                server.start()
                server.wait_ready(report.bound("triton", load_factor))
            with report.step("numpy", args.fail_at):
                data["stub_numpy"] = stub_numpy(server)
                problems = check_numpy(data["stub_numpy"], bool(numpy_env))
                if problems:
                    raise CheckFailed("; ".join(problems))
            with report.step("parity", args.fail_at):
                http = HttpInfer(server.http_url)
                expected = Expected(reference, workdir / "repository", options.max_length)
                data["parity"], misses = parity_matrix(http, expected, texts, precision)
                data["parity_min_float_cosine"] = min(row["float"]["min_cosine"] for row in data["parity"])
                if misses:
                    raise CheckFailed(f"{len(misses)} misses, first: {misses[:3]}")
            with report.step("engine", args.fail_at, load_factor):
                folder = workdir / "repository" / encoder_name("retrieval") / "1"
                data["engine"] = bare_engine(folder, precision, rows, options, seconds, buckets)
                if not buckets:  # compiled, length buckets fix the pass shapes whatever the order
                    data["engine_shuffled"] = bare_engine(folder, precision, rows, options, seconds, shuffled=True)
                if gpu and not buckets:  # what the served encoder leaves out: cuDNN's attention, planned per new shape
                    data["engine_shuffled_cudnn"] = bare_engine(folder, precision, rows, options, seconds,
                                                                shuffled=True, cudnn_attention=True)
            with report.step("served", args.fail_at):
                data["served"] = []
                for users, tasks in [(users, ("retrieval",)) for users in concurrency] + [(concurrency[-1], TASKS)]:
                    row = served(http, server, workload, users, seconds, tasks)
                    row["served_over_engine"] = round(row["tokens_per_s"] / data["engine"]["tokens_per_s"], 3)
                    data["served"].append(row)
                    report.write()
                errors = [f"{r['errors']} errors at concurrency {r['concurrency']}"
                          for r in data["served"] if r["errors"]]
                if errors:
                    raise CheckFailed("; ".join(errors))
            # torch.compile over length buckets: measured, not assumed (off by default); last, the slowest
            if gpu and "compiled" not in args.skip and not buckets:
                with report.step("compiled", args.fail_at):
                    data["engine_compiled"] = bare_engine(folder, precision, rows, options, seconds, COMPILE_BUCKETS)
        finally:
            server.stop()
            if buckets and "served" in data:  # stopped: every stub's warning has reached the log
                data["compiled_while_serving"] = compiled_while_serving(log, log_start)
            if args.sample_stacks:
                from .stub_sampler import merged

                (out / "stacks.txt").write_text(merged(workdir / "stacks", ("encoder_retrieval", "preprocess",
                                                                            "postprocess")))
    except Exception as exc:  # noqa: BLE001 - a step records its own; anything else is recorded here
        if not any(str(exc) in failure for failure in data["failures"]):
            data["failures"].append(f"{type(exc).__name__}: {exc}")
    report.close()
    print(markdown(data))
    return 1 if data["failures"] else 0


def markdown(report: dict) -> str:
    lines = [f"## GPU check: {report.get('device')}, {report.get('precision')}", "",
             str(report.get("checkpoint", "")), "",
             "Steps: " + ", ".join(f"{name} {step['seconds']} s{'' if step['ok'] else ' (FAILED)'}"
                                   for name, step in report["steps"].items())]
    if "stub_numpy" in report:
        lines += ["", "numpy per model: " + ", ".join(f"{m}: {v.split()[0]}" for m, v in
                                                       sorted(report["stub_numpy"].items()))]
    if "parity_min_float_cosine" in report:
        lines += ["", f"Parity (served vs reference, 4 tasks x 2 input types x dims {DIMENSIONS} x every output; "
                      f"quantized outputs vs quantizing the served float): min float cosine "
                      f"{report['parity_min_float_cosine']:.7f} (bar {report['parity_float_cosine_bar']})"]
    for key in ("engine", "engine_shuffled", "engine_shuffled_cudnn", "engine_compiled"):
        if key in report:
            engine = report[key]
            label = f" (compiled: {','.join(map(str, engine['compiled']))})" if engine["compiled"] else ""
            label += " (requests in a new order each round)" if engine.get("shuffled") else ""
            label += " (cuDNN attention allowed)" if engine.get("cudnn_attention") else ""
            lines += ["", f"Bare engine{label} "
                          f"({engine['device']}, {engine['precision']}): {engine['tokens_per_s']} real tokens/s, "
                          f"padded/real {engine['padded_ratio']}, load + warm-up {engine['load_and_warm_up_s']} s"
                          + (f", graphs compiled after warm-up {engine['graphs_after_warm_up']}"
                             if engine.get("graphs_after_warm_up") is not None else "")]
    if report.get("packing"):
        from jina_triton_pipeline.packing import PASS_TOKENS

        lines += ["", f"| rows per execute | budget | padding bound (or {PASS_TOKENS} tokens) | passes / 1k rows "
                      "| padded/real | tokens/pass |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {p['rows_per_execute']} | {p['budget']} | {p['max_padding']} | {p['passes_per_1k_rows']} | "
                  f"{p['padded_over_real']} | {p['tokens_per_pass']} |" for p in report["packing"]]
    if report.get("served"):
        lines += ["", "| concurrency | tasks | requests | errors | tokens/s | p50 ms | p95 ms | padded/real | "
                      "served/engine |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['concurrency']} | {r['tasks']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']} | "
                  f"{r['p50_ms']} | {r['p95_ms']} | {r['padded_ratio']} | {r.get('served_over_engine')} |"
                  for r in report["served"]]
        if "compiled_while_serving" in report:
            lines += ["", f"Graphs the served encoders compiled after their load (parity and served steps): "
                          f"{report['compiled_while_serving']}"]
        from .stage_profile import markdown as stage_table

        for r in report["served"]:
            if r.get("stages"):
                lines += ["", f"Where the time went at concurrency {r['concurrency']}, {r['tasks']} task(s):", "",
                          *stage_table(r["stages"])]
    lines += ["", "Failures: " + ("none" if not report["failures"] else "; ".join(report["failures"]))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(prog="jina-triton gpu-check", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
