"""`jina-triton`: synth, build, serve, up, embed and bench."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from jina_triton_client.contract import ADMIN_APIS, DEFAULT_MAX_LENGTH, LIMIT_ENV, MODEL_REPO_ID

log = logging.getLogger("jina_triton")


def _step(message: str) -> None:
    log.info(message)


def cmd_synth(args) -> int:
    from .synth import write_synthetic_checkpoint

    started = time.perf_counter()
    out = write_synthetic_checkpoint(Path(args.out), preset=args.preset, seed=args.seed, progress=_step)
    log.info("SYNTHETIC checkpoint (preset %s, seed %d) written to %s in %.1f s — random weights, "
             "its embeddings are meaningless", args.preset, args.seed, out, time.perf_counter() - started)
    return 0


def cmd_build(args) -> int:
    from .checkpoint import open_checkpoint
    from .repository import RepositoryOptions, build_repository

    started = time.perf_counter()
    checkpoint = open_checkpoint(args.checkpoint)
    if checkpoint.synthetic:
        log.warning("building from a %s", checkpoint.label)
    options = RepositoryOptions(
        target=args.target, gpu_instances=args.gpu_instances, precision=args.precision,
        max_length=args.max_length, max_batch_size=args.max_batch_size,
        max_text_bytes=args.max_text_bytes, max_request_bytes=args.max_request_bytes,
        queue_delay_us=args.queue_delay_us, token_budget=args.token_budget,
        intra_op_threads=args.threads, encoder_instances=args.encoder_instances,
        preprocess_instances=args.preprocess_instances, postprocess_instances=args.postprocess_instances)
    manifest = build_repository(checkpoint, Path(args.out), options,
                                cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=_step)
    log.info("model repository written to %s in %.1f s (%s, %s)", args.out,
             time.perf_counter() - started, manifest["precision"], manifest["checkpoint"]["label"])
    return 0


def cmd_serve(args) -> int:
    return run_server(Path(args.repository), args)


def run_server(repository: Path, args) -> int:
    import signal

    from .repository import read_manifest
    from .serve import Security, TritonServer

    manifest = read_manifest(repository)
    if manifest["checkpoint"]["synthetic"]:
        _banner(f"SERVING A {manifest['checkpoint']['label']}")
    env = {LIMIT_ENV[name]: str(getattr(args, name)) for name in LIMIT_ENV if getattr(args, name)}
    security = Security(admin_key=args.admin_key or os.environ.get("JINA_TRITON_ADMIN_KEY"),
                        api_key=args.api_key or os.environ.get("JINA_TRITON_API_KEY"),
                        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca)
    server = TritonServer(repository, host=args.host, http_host=args.http_host, http_port=args.http_port,
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, env=env,
                          security=security)
    if not security.admin_key:
        log.info("admin APIs (%s) are locked: pass --admin-key or JINA_TRITON_ADMIN_KEY to use them",
                 ", ".join(ADMIN_APIS))

    def stop(signum, _frame):  # no waiting in here: the main thread waits below
        server.stop_requested = True
        log.info("signal %d: stopping Triton", signum)
        server.terminate()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.start()
    server.wait_ready(args.ready_timeout)
    server.supervise(on_reload=lambda model: log.warning("a Python stub of %s died: model reloaded", model))
    log.info("ready: gRPC %s, HTTP http://%s, metrics http://%s:%d/metrics", server.grpc_url,
             server.http_url, args.host, args.metrics_port)
    log.info("try: %s", example_request(server.http_url))
    code = server.wait()
    return 0 if server.stop_requested else code


def _banner(message: str) -> None:
    log.warning("\n%s\n%s\n%s", "!" * 78, message, "!" * 78)


def cmd_up(args) -> int:
    """make serve: pick a checkpoint, build the repository (engines cached), serve it."""
    from .checkpoint import CheckpointError, open_checkpoint
    from .repository import RepositoryOptions, build_repository
    from .synth import synthetic_checkpoint

    workdir = Path(args.workdir)
    try:
        checkpoint = open_checkpoint(args.checkpoint or MODEL_REPO_ID)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        _banner(f"The real {MODEL_REPO_ID} is not available ({exc}).\n"
                f"Serving a SYNTHETIC full-size replica with RANDOM weights: its embeddings are "
                f"MEANINGLESS.\nPass CHECKPOINT=/path/to/checkpoint to serve real weights.")
        checkpoint = synthetic_checkpoint(workdir / "checkpoints" / "synthetic-full", "full", progress=_step)
    repository = workdir / "repository"
    build_repository(checkpoint, repository, RepositoryOptions(precision=args.precision),
                     progress=_step)
    return run_server(repository, args)


def cmd_bench(args) -> int:
    from .bench import markdown, run_bench
    from .checkpoint import open_checkpoint
    from .synth import synthetic_checkpoint

    out = Path(args.out)
    if args.checkpoint:
        checkpoint = open_checkpoint(args.checkpoint)
    else:
        checkpoint = synthetic_checkpoint(out / f"checkpoint-synthetic-{args.preset}", args.preset, progress=_step)
    report = run_bench(checkpoint, out, tuple(args.precisions.split(",")), args.profile, args.texts,
                       args.concurrency, args.task, Path(args.cache_dir) if args.cache_dir else None,
                       progress=_step)
    print(markdown(report))
    return 0


def example_request(http_url: str) -> str:
    return (f"curl -s http://{http_url}/v2/models/embed_retrieval/infer -H 'Content-Type: application/json' "
            "-d '{\"inputs\":[{\"name\":\"text\",\"shape\":[1,1],\"datatype\":\"BYTES\","
            "\"data\":[\"how do I reset my router?\"]}],\"parameters\":{\"input_type\":\"query\","
            "\"dimensions\":256},\"outputs\":[{\"name\":\"embeddings\"}]}'")


def parser() -> argparse.ArgumentParser:
    from .repository import RepositoryOptions

    root = argparse.ArgumentParser(prog="jina-triton", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true")
    commands = root.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a SYNTHETIC random-weight checkpoint")
    synth.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    synth.add_argument("--out", required=True, help="checkpoint directory to (re)write")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    build = commands.add_parser("build", help="build the engines and the Triton model repository")
    build.add_argument("--checkpoint", default=MODEL_REPO_ID,
                       help=f"checkpoint directory or HF repo id (default {MODEL_REPO_ID})")
    build.add_argument("--out", required=True, help="model repository directory to write")
    build.add_argument("--target", choices=("cpu", "onnx-gpu", "tensorrt"), default="cpu",
                       help="cpu (default; run here), onnx-gpu or tensorrt (GPU configs: not run here)")
    build.add_argument("--gpu-instances", type=int, default=1, help="encoder instances per GPU (GPU targets)")
    build.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    build.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                       help=f"tokens per text, prefix and EOS included (default {DEFAULT_MAX_LENGTH})")
    defaults = RepositoryOptions()
    build.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                       help=f"texts per request (default {defaults.max_batch_size})")
    build.add_argument("--max-text-bytes", type=int, default=defaults.max_text_bytes,
                       help=f"UTF-8 bytes per text (default {defaults.max_text_bytes})")
    build.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                       help=f"UTF-8 text bytes per request (default {defaults.max_request_bytes})")
    build.add_argument("--queue-delay-us", type=int, default=defaults.queue_delay_us,
                       help="encoder dynamic-batching window in microseconds")
    build.add_argument("--token-budget", type=int, default=defaults.token_budget,
                       help="padded tokens per encoder forward pass")
    build.add_argument("--threads", type=int, default=defaults.intra_op_threads,
                       help="onnxruntime intra-op threads per encoder instance")
    for part in ("encoder", "preprocess", "postprocess"):
        build.add_argument(f"--{part}-instances", type=int, default=getattr(defaults, f"{part}_instances"))
    build.add_argument("--cache-dir", help="engine cache (default $JINA_TRITON_CACHE or ~/.cache/jina-triton)")
    build.set_defaults(run=cmd_build)

    serve = commands.add_parser("serve", help="serve a model repository with the bundled Triton server")
    serve.add_argument("--repository", required=True)
    _server_arguments(serve)
    serve.set_defaults(run=cmd_serve)

    from jina_triton_client import cli as client_cli

    embed = commands.add_parser("embed", help="embed texts through a running server (gRPC)")
    client_cli.add_arguments(embed)
    embed.set_defaults(run=client_cli.run)

    bench = commands.add_parser("bench", help="engine vs served vs reference throughput (make bench)")
    bench.add_argument("--checkpoint", help="checkpoint to measure (default: a SYNTHETIC replica of --preset)")
    bench.add_argument("--preset", choices=("tiny", "full"), default="full")
    bench.add_argument("--out", default="artifacts/bench")
    bench.add_argument("--precisions", default="fp32,int8")
    bench.add_argument("--profile", choices=("query", "document", "mixed"), default="mixed")
    bench.add_argument("--texts", type=int, default=64)
    bench.add_argument("--concurrency", type=int, default=8)
    bench.add_argument("--task", default="retrieval")
    bench.add_argument("--cache-dir")
    bench.set_defaults(run=cmd_bench)

    up = commands.add_parser("up", help="pick a checkpoint, build and serve (what `make serve` runs)")
    up.add_argument("--checkpoint", help=f"directory or repo id (default: {MODEL_REPO_ID} if it can be "
                                          f"had, else a SYNTHETIC full-size replica)")
    up.add_argument("--workdir", default="artifacts")
    up.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    _server_arguments(up)
    up.set_defaults(run=cmd_up)
    return root


def _server_arguments(serve) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--http-host", help="address for HTTP, which has no TLS (default: --host)")
    serve.add_argument("--max-length", type=int, help="lower the repository's max tokens per text")
    serve.add_argument("--max-text-bytes", type=int, help="lower the repository's max bytes per text")
    serve.add_argument("--max-request-bytes", type=int, help="lower the repository's max text bytes per request")
    serve.add_argument("--admin-key", help="key (header 'admin-key') for the model-repository, model-config, "
                                           "shared-memory, logging and trace APIs; default: locked")
    serve.add_argument("--api-key", help="key (header 'api-key') required for inference; default: open")
    serve.add_argument("--tls-cert", help="gRPC TLS: server certificate (PEM)")
    serve.add_argument("--tls-key", help="gRPC TLS: server private key (PEM)")
    serve.add_argument("--tls-client-ca", help="gRPC mutual TLS: CA that client certificates must chain to")
    serve.add_argument("--ready-timeout", type=float, default=900)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from .checkpoint import CheckpointError
    from .engines import EngineError
    from .serve import ServeError

    try:
        return args.run(args)
    except (CheckpointError, EngineError, ServeError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
