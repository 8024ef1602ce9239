"""`jina-triton`: synth, build, serve, up, gateway, embed, bench, bench-readme, sweep, gpu-check."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from jina_triton_client.contract import MODEL_REPO_ID

log = logging.getLogger("jina_triton")


def _step(message: str) -> None:
    log.info(message)


def cmd_synth(args) -> int:
    from jina_triton_build.synth import write_synthetic_checkpoint

    started = time.perf_counter()
    out = write_synthetic_checkpoint(Path(args.out), preset=args.preset, seed=args.seed, progress=_step,
                                     tokenizer=args.tokenizer)
    log.info("SYNTHETIC checkpoint (preset %s, seed %d, %s tokenizer) written to %s in %.1f s — random weights, "
             "its embeddings are meaningless", args.preset, args.seed, args.tokenizer or "default", out,
             time.perf_counter() - started)
    return 0


def cmd_build(args) -> int:
    from jina_triton_build.checkpoint import open_checkpoint
    from jina_triton_build.options import options_from_arguments
    from jina_triton_build.repository import build_repository

    started = time.perf_counter()
    checkpoint = open_checkpoint(args.checkpoint)
    if checkpoint.synthetic:
        log.warning("building from a %s", checkpoint.label)
    manifest = build_repository(checkpoint, Path(args.out), options_from_arguments(args),
                                cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=_step)
    log.info("model repository written to %s in %.1f s (%s, %s, %s)", args.out, time.perf_counter() - started,
             manifest["target"], manifest["precision"], manifest["checkpoint"]["label"])
    return 0


def serve_settings(args):
    from jina_triton_build.options import serve_limits

    from .settings import ServeOptions

    return ServeOptions.from_arguments(args, {name: getattr(args, name) for name in serve_limits()})


def cmd_serve(args) -> int:
    from .serve import serve

    return serve(Path(args.repository), serve_settings(args))


def cmd_up(args) -> int:
    """make serve: pick a checkpoint and target, build the repository (engines cached), serve it."""
    from jina_triton_build.checkpoint import CheckpointError, open_checkpoint
    from jina_triton_build.options import BuildOptions
    from jina_triton_build.repository import build_repository
    from jina_triton_build.synth import synthetic_checkpoint

    from .serve import banner, serve

    workdir = Path(args.workdir)
    try:
        checkpoint = open_checkpoint(args.checkpoint or MODEL_REPO_ID)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        banner(f"The real {MODEL_REPO_ID} is not available ({exc}).\n"
               f"Serving a SYNTHETIC full-size replica with RANDOM weights: its embeddings are "
               f"MEANINGLESS.\nPass CHECKPOINT=/path/to/checkpoint to serve real weights.")
        checkpoint = synthetic_checkpoint(workdir / "checkpoints" / "synthetic-full", "full", progress=_step)
    target = args.target if args.target != "auto" else ("cuda" if _cuda() else "cpu")
    log.info("target %s%s", target, " (a CUDA GPU is visible)" if target == "cuda" else "")
    repository = workdir / f"repository-{target}"
    build_repository(checkpoint, repository, BuildOptions(target=target, precision=args.precision, tasks=args.tasks),
                     progress=_step)
    settings = serve_settings(args)
    if target == "tensorrt":  # plans for this GPU, each past its parity gate, or the PyTorch encoders
        from jina_triton_build.tensorrt_step import prepare_tensorrt

        decision = prepare_tensorrt(repository, workdir, checkpoint.fingerprint, log.info)
        if decision.engine == "none":
            log.error("%s", decision.reason)
            return 2
        settings.triton_args += decision.triton_arguments()
    return serve(repository, settings)


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def cmd_gateway(args) -> int:
    from .gateway.__main__ import run

    return run(args)


def cmd_bench(args) -> int:
    from jina_triton_build.checkpoint import open_checkpoint
    from jina_triton_build.synth import synthetic_checkpoint

    from jina_triton_tools.bench import markdown, run_bench

    out = Path(args.out)
    if args.checkpoint:
        checkpoint = open_checkpoint(args.checkpoint)
    else:
        checkpoint = synthetic_checkpoint(out / f"checkpoint-synthetic-{args.preset}", args.preset, progress=_step)
    report = run_bench(checkpoint, out, tuple(args.precisions.split(",")), args.profile, args.texts,
                       args.concurrency, args.task, Path(args.cache_dir) if args.cache_dir else None,
                       progress=_step, repeats=args.repeats, gateway=not args.no_gateway, cold=not args.cache_dir)
    print(markdown(report))
    return 0


def cmd_bench_readme(args) -> int:
    from jina_triton_tools.readme_report import newest_report, update_readme

    report = Path(args.report) if args.report else newest_report(Path(args.out))
    update_readme(Path(args.readme), report)
    log.info("%s: the benchmark section now shows %s", args.readme, report)
    return 0


def cmd_sweep(args) -> int:
    from jina_triton_build.synth import synthetic_checkpoint

    from jina_triton_tools.sweep import run_sweep, sweep_markdown

    out = Path(args.out)
    checkpoint = synthetic_checkpoint(out / f"checkpoint-synthetic-{args.preset}", args.preset, progress=_step)
    print(sweep_markdown(run_sweep(checkpoint, out, Path(args.cache_dir) if args.cache_dir else None, args.texts,
                                   args.concurrency, progress=_step, rounds=args.rounds, precision=args.precision)))
    return 0


def cmd_gpu_check(args) -> int:
    from jina_triton_tools.gpu_check import run

    return run(args)


def parser() -> argparse.ArgumentParser:
    from jina_triton_build.options import add_build_arguments, add_serve_limit_arguments

    root = argparse.ArgumentParser(prog="jina-triton", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true")
    commands = root.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a SYNTHETIC random-weight checkpoint")
    synth.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    synth.add_argument("--out", required=True, help="checkpoint directory to (re)write")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tokenizer", help="real (the Llama-3 vocabulary, default for full), small (a BPE "
                                           "trained on the shipped corpus, default for tiny) or a tokenizer.json")
    synth.set_defaults(run=cmd_synth)

    build = commands.add_parser("build", help="build the engines and the Triton model repository")
    build.add_argument("--checkpoint", default=MODEL_REPO_ID,
                       help=f"checkpoint directory or HF repo id (default {MODEL_REPO_ID})")
    build.add_argument("--out", required=True, help="model repository to write (a link to its newest snapshot)")
    build.add_argument("--cache-dir", help="build cache (default $JINA_TRITON_CACHE or ~/.cache/jina-triton)")
    add_build_arguments(build)
    build.set_defaults(run=cmd_build)

    serve = commands.add_parser("serve", help="serve a model repository with the bundled Triton server")
    serve.add_argument("--repository", required=True)
    _server_arguments(serve, add_serve_limit_arguments)
    serve.set_defaults(run=cmd_serve)

    up = commands.add_parser("up", help="pick a checkpoint, build and serve (what `make serve` runs)")
    up.add_argument("--checkpoint", help=f"directory or repo id (default: {MODEL_REPO_ID} if it can be "
                                          f"had, else a SYNTHETIC full-size replica)")
    up.add_argument("--workdir", default="artifacts")
    up.add_argument("--target", choices=("auto", "cpu", "cuda", "tensorrt"), default="auto",
                    help="auto: cuda where a CUDA GPU is visible, else cpu; tensorrt: cuda plus TensorRT plans "
                         "past their parity gate where TensorRT is installed (NOT RUN here)")
    up.add_argument("--precision", help="default: fp32 on cpu, fp16 on cuda")
    _server_arguments(up, add_serve_limit_arguments)
    up.set_defaults(run=cmd_up)

    from .gateway.__main__ import add_arguments as gateway_arguments

    gateway = commands.add_parser("gateway", help="the OpenAI/Jina embeddings API in front of a running Triton")
    gateway_arguments(gateway)
    gateway.set_defaults(run=cmd_gateway)

    from jina_triton_client import cli as client_cli

    embed = commands.add_parser("embed", help="embed texts through a running server (gRPC)")
    client_cli.add_arguments(embed)
    embed.set_defaults(run=client_cli.run)

    bench = commands.add_parser("bench", help="engine vs served vs gateway vs reference throughput (make bench)")
    bench.add_argument("--checkpoint", help="checkpoint to measure (default: a SYNTHETIC replica of --preset)")
    bench.add_argument("--preset", choices=("tiny", "full"), default="full")
    bench.add_argument("--out", default="artifacts/bench")
    bench.add_argument("--precisions", default="fp32,int8")
    bench.add_argument("--profile", choices=("query", "document", "mixed"), default="mixed")
    bench.add_argument("--texts", type=int, default=128)
    bench.add_argument("--concurrency", type=int, default=8)
    bench.add_argument("--repeats", type=int, default=2, help="runs of each measurement, to show they repeat")
    bench.add_argument("--task", default="retrieval")
    bench.add_argument("--no-gateway", action="store_true", help="skip the gateway path")
    bench.add_argument("--cache-dir", help="reuse this engine cache (default: a fresh one, so that the run "
                       "measures the cold start)")
    bench.set_defaults(run=cmd_bench)
    readme = commands.add_parser("bench-readme", help="one bench run's report into the README (make bench-readme)")
    readme.add_argument("--report", help="a bench-*.md (default: the newest in --out)")
    readme.add_argument("--out", default="artifacts/bench")
    readme.add_argument("--readme", default="README.md")
    readme.set_defaults(run=cmd_bench_readme)

    from jina_triton_tools.gpu_check import add_arguments as gpu_check_arguments

    sweep = commands.add_parser("sweep", help="the cpu serving defaults by measurement (make bench-sweep)")
    sweep.add_argument("--preset", choices=("tiny", "full"), default="full")
    sweep.add_argument("--out", default="artifacts/sweep")
    sweep.add_argument("--texts", type=int, default=128)
    sweep.add_argument("--concurrency", type=int, default=8)
    sweep.add_argument("--cache-dir")
    sweep.add_argument("--rounds", type=int, default=2, help="times every candidate is served, in turn (hosts drift)")
    sweep.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    sweep.set_defaults(run=cmd_sweep)
    check = commands.add_parser("gpu-check", help="the GPU check: cuda target, parity, throughput sweep")
    gpu_check_arguments(check)
    check.set_defaults(run=cmd_gpu_check)
    return root


def _server_arguments(parser, add_limits) -> None:
    from .settings import ServeOptions

    ServeOptions.add_arguments(parser)
    add_limits(parser)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from jina_triton_build.checkpoint import CheckpointError
    from jina_triton_build.engines import EngineError

    from .triton_process import ServeError

    try:
        return args.run(args)
    except (CheckpointError, EngineError, ServeError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
