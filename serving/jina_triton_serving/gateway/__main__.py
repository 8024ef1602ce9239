"""`jina-triton gateway` (or `python -m jina_triton_serving.gateway`): the embeddings API on uvicorn.

Keys never travel on a command line: API keys come from $JINA_TRITON_API_KEY (comma-separated)
or --api-key-file (one per line), the admin key from $JINA_TRITON_ADMIN_KEY or --admin-key-file.
Closed by default: on an address beyond loopback it refuses to start without API keys unless
the operator passes --allow-anonymous; a key file that holds no key is an error, not "no keys".
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jina_triton_client import Limits
from jina_triton_client.contract import task_list

from ..settings import ADMIN_KEY_ENV, API_KEY_ENV, LOCK_KEY_ENV, STATUS_FILE_ENV


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .app import Config

    defaults = Config()
    parser.add_argument("--triton", default=defaults.triton, help="Triton's gRPC endpoint HOST:PORT")
    parser.add_argument("--triton-metrics", help="Triton's metrics URL (for operators' reference)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tls-cert", help="TLS certificate (PEM); with --tls-key the gateway speaks HTTPS")
    parser.add_argument("--tls-key", help="TLS private key (PEM)")
    parser.add_argument("--api-key-file", help="file with API keys, one per line (or $JINA_TRITON_API_KEY)")
    parser.add_argument("--admin-key-file", help="file with the admin key (or $JINA_TRITON_ADMIN_KEY)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--max-inputs", type=int, default=defaults.max_inputs, help="texts per API request")
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency,
                        help="requests admitted at once (reading, parsing, embedding); more get 429 with Retry-After")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="open HTTP connections; more are answered 503 and closed")
    parser.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT,
                        help="seconds a client has to send its request headers")
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout,
                        help="seconds a client has to send its request body (slower: 408)")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="serve without API keys on an address beyond loopback (closed by default)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds per request, retries included")
    parser.add_argument("--max-request-tokens", type=int, default=Limits().max_tokens,
                        help="the server's tokens per request (the client cuts requests to fit)")
    parser.add_argument("--max-length", type=int, default=Limits().max_length, help="the server's tokens per text")
    parser.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                        help="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces (default: none)")
    parser.add_argument("--tasks", default="", help="the tasks Triton serves, comma-separated (default: all); "
                        "/v1/models lists these and a request for another is a 404")
    parser.add_argument("--status-file", default=os.environ.get(STATUS_FILE_ENV),
                        help="the status `jina-triton serve` writes (Triton up, models down)")


LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_CONNECTIONS = 512
HEADER_TIMEOUT = 10.0


class GatewayConfigError(ValueError):
    pass


def read_keys(file: str | None, variable: str) -> tuple:
    """Keys from a file (one per line) or a comma-separated variable; an empty file is an error."""
    if file:
        keys = tuple(line.strip() for line in Path(file).read_text().splitlines() if line.strip())
        if not keys:
            raise GatewayConfigError(f"{file} holds no key: put one key per line in it, or leave the flag out")
        return keys
    return tuple(part.strip() for part in os.environ.get(variable, "").split(",") if part.strip())


def check_exposure(host: str, api_keys: tuple, allow_anonymous: bool) -> None:
    if host not in LOOPBACK and not api_keys and not allow_anonymous:
        raise GatewayConfigError(f"the gateway would serve anyone on {host} without an API key: set "
                                 f"${API_KEY_ENV} or --api-key-file, or pass --allow-anonymous on purpose")


def config_from(args):
    from .app import Config

    admin = read_keys(args.admin_key_file, ADMIN_KEY_ENV)
    api_keys = read_keys(args.api_key_file, API_KEY_ENV)
    check_exposure(args.host, api_keys, args.allow_anonymous)
    return Config(triton=args.triton, api_keys=api_keys,
                  admin_key=admin[0] if admin else None, triton_lock_key=os.environ.get(LOCK_KEY_ENV),
                  max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
                  max_concurrency=args.max_concurrency, timeout=args.timeout, body_timeout=args.body_timeout,
                  status_file=Path(args.status_file) if args.status_file else None,
                  otlp_endpoint=args.otlp_endpoint, tasks=task_list(args.tasks),
                  limits=Limits(max_tokens=args.max_request_tokens, max_length=args.max_length))


def run(args) -> int:
    import uvicorn

    from .app import create_app
    from .connections import bounded_protocol

    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: TLS needs both --tls-cert and --tls-key", file=sys.stderr)
        return 2
    try:
        config = config_from(args)
    except (ValueError, OSError) as exc:  # GatewayConfigError, an unknown task
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning",
                access_log=False, ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                http=bounded_protocol(args.max_connections, args.header_timeout),
                timeout_graceful_shutdown=30, timeout_keep_alive=75)  # longer than load balancers' idle 60 s
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jina-triton gateway", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
