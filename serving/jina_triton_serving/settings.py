"""How a repository is served, declared once: each setting of `jina-triton serve` / `up` with its
default and help; the CLI flags, the serve loop, Triton's process and the gateway's command line
all derive from this class. Also the environment variables the runtime reads and hands on.

The limits `serve` may lower are the build's (jina_triton_build.options, `lowered_by_serve`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

# the environment: keys never travel on a command line
API_KEY_ENV = "JINA_TRITON_API_KEY"        # the gateway's API keys, comma-separated
ADMIN_KEY_ENV = "JINA_TRITON_ADMIN_KEY"    # the gateway's admin key
LOCK_KEY_ENV = "JINA_TRITON_LOCK_KEY"      # Triton's admin lock of this start: serve -> gateway
STATUS_FILE_ENV = "JINA_TRITON_STATUS_FILE"  # what serve knows of Triton and its models: serve -> gateway


def setting(default, help: str, *, flag: str | None = None, kind=None, negative: bool = False):
    """`flag` when it is not the name's; `negative`: a store_false switch (--no-...)."""
    return field(default=default, metadata={"help": help, "flag": flag, "kind": kind, "negative": negative})


@dataclass
class ServeOptions:
    host: str = setting("127.0.0.1", "Triton's gRPC and metrics address (another one needs mutual TLS: "
                                     "--tls-cert, --tls-key and --tls-client-ca)")
    http_host: str = setting("127.0.0.1", "Triton's HTTP address, which has no TLS (another one needs "
                                          "--allow-insecure-http)")
    allow_insecure_http: bool = setting(False, "let Triton's plaintext, unauthenticated HTTP inference listen "
                                               "beyond loopback")
    http_port: int = setting(8000, "Triton's HTTP port")
    grpc_port: int = setting(8001, "Triton's gRPC port")
    metrics_port: int = setting(8002, "Triton's metrics port")
    metrics_host: str | None = setting(None, "Triton's metrics address (default: --host; metrics hold no secret)")
    tls_cert: str | None = setting(None, "gRPC TLS: server certificate (PEM)")
    tls_key: str | None = setting(None, "gRPC TLS: server private key (PEM)")
    tls_client_ca: str | None = setting(None, "gRPC mutual TLS: the CA client certificates must chain to")
    tasks: str = setting("", "the tasks to serve, comma-separated (default: every task the repository holds); "
                             "Triton loads only their models, the gateway lists only them")
    ready_timeout: float = setting(900.0, "seconds Triton may take to load the models", kind=float)
    max_restarts: int = setting(3, "tritonserver restarts per minute before serve gives up")
    trace_endpoint: str | None = setting(None, "OTLP/HTTP endpoint for Triton's traces (requests with a "
                                               "traceparent)")
    gateway: bool = setting(True, "do not start the OpenAI/Jina gateway beside Triton", flag="--no-gateway",
                            negative=True)
    gateway_host: str = setting("127.0.0.1", "the gateway's address (beyond loopback it needs API keys)")
    gateway_port: int = setting(8080, "the gateway's port")
    gateway_tls_cert: str | None = setting(None, "the gateway's TLS certificate (PEM)")
    gateway_tls_key: str | None = setting(None, "the gateway's TLS private key (PEM)")
    api_key_file: str | None = setting(None, f"file with the gateway's API key(s), one per line (or ${API_KEY_ENV}); "
                                             f"never on a command line")
    admin_key_file: str | None = setting(None, f"file with the gateway's admin key (or ${ADMIN_KEY_ENV})")
    allow_anonymous: bool = setting(False, "let the gateway serve without API keys on an address beyond loopback")
    limits: dict = field(default_factory=dict)   # build option -> the lowered value (`serve --max-length` ...)
    log_file: Path | None = None                 # Triton's output (tests, the bench)
    triton_args: list = field(default_factory=list)   # added by `up` (the TensorRT step's config name)

    @classmethod
    def declared(cls):
        return [spec for spec in fields(cls) if "help" in spec.metadata]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for spec in cls.declared():
            meta = spec.metadata
            flag = meta["flag"] or "--" + spec.name.replace("_", "-")
            if isinstance(spec.default, bool):
                action = "store_false" if meta["negative"] else "store_true"
                parser.add_argument(flag, dest=spec.name, action=action, help=meta["help"])
            else:
                kind = meta["kind"] or (type(spec.default) if spec.default is not None else str)
                shown = "" if spec.default is None else f" (default {spec.default})"
                parser.add_argument(flag, dest=spec.name, type=kind, default=spec.default, help=meta["help"] + shown)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, limits: dict | None = None) -> "ServeOptions":
        return cls(**{spec.name: getattr(args, spec.name) for spec in cls.declared()}, limits=limits or {})

    def gateway_arguments(self) -> list[str]:
        """The gateway's own flags for these settings (its keys come from files or the environment)."""
        args = ["--host", self.gateway_host, "--port", str(self.gateway_port)]
        for flag, value in (("--tls-cert", self.gateway_tls_cert), ("--tls-key", self.gateway_tls_key),
                            ("--api-key-file", self.api_key_file), ("--admin-key-file", self.admin_key_file)):
            args += [flag, value] if value else []
        return args + (["--allow-anonymous"] if self.allow_anonymous else [])
