"""`jina-triton embed` (also `jina-triton-embed`): texts in, JSON lines or .npy out."""
from __future__ import annotations

import argparse
import base64
import json
import sys

import numpy as np

from .contract import (
    DEFAULT_INPUT_TYPE, DEFAULT_TASK, DEFAULT_TRUNCATE, INPUT_TYPES, MAX_DIMENSIONS, OUTPUTS, PACKED_OUTPUTS, TASKS,
    TRUNCATE_MODES)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="*", help="texts to embed; none: one per line from stdin")
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC HOST:PORT (comma-separate several)")
    parser.add_argument("--task", choices=TASKS, default=DEFAULT_TASK)
    parser.add_argument("--input-type", choices=INPUT_TYPES, default=DEFAULT_INPUT_TYPE)
    parser.add_argument("--dimensions", type=int, default=MAX_DIMENSIONS)
    parser.add_argument("--output", choices=tuple(OUTPUTS), default="float")
    parser.add_argument("--truncate", choices=TRUNCATE_MODES, default=DEFAULT_TRUNCATE)
    parser.add_argument("--npy", help="write the embeddings to this .npy file instead of JSON lines")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole call, retries included")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gRPC header (repeatable)")
    parser.add_argument("--ca", help="CA certificate (PEM) to verify a TLS server")
    parser.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key", help="client private key (PEM) for mutual TLS")


def run(args) -> int:
    from . import EmbeddingClient, EmbeddingError, InvalidArgument

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    headers = dict(item.split("=", 1) for item in args.header)
    try:
        with EmbeddingClient(args.url, timeout=args.timeout, headers=headers,
                             root_certificates=args.ca,
                             certificate_chain=args.cert, private_key=args.key) as client:
            vectors, counts = client.embed(texts, task=args.task, input_type=args.input_type,
                                           dimensions=args.dimensions, output=args.output,
                                           truncate=args.truncate, return_token_counts=True)
    except (InvalidArgument, EmbeddingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.npy:
        np.save(args.npy, vectors)
        return 0
    packed = args.output in PACKED_OUTPUTS
    for index, (vector, count) in enumerate(zip(vectors, counts)):
        embedding = base64.b64encode(vector.tobytes()).decode() if packed else vector.tolist()
        sys.stdout.write(json.dumps({"index": index, "token_count": int(count), "embedding": embedding}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jina-triton-embed", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
