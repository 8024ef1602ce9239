"""Serving a repository, the one way `jina-triton serve`, `jina-triton up` and the container do it.

- Triton starts on the repository's snapshot, held so that a rebuild never prunes it.
- A supervisor reloads models whose Python stub died; a dead tritonserver is started
  again (backoff, at most `max_restarts` per minute), after clearing its shared memory.
- The gateway (OpenAI/Jina API, keys, TLS, metrics) runs beside it when asked for and
  reports not ready while Triton or any model is down (it reads the status file).
- SIGINT/SIGTERM stop everything cleanly.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from jina_triton_client.contract import ensemble_name, task_list
from jina_triton_models.layout import read_manifest
from jina_triton_pipeline.internals import task_models

from .child_launch import guarded
from .gateway.process import gateway_command, wait_listening
from .settings import ADMIN_KEY_ENV, API_KEY_ENV, LOCK_KEY_ENV, STATUS_FILE_ENV, ServeOptions
from .supervisor import StubSupervisor
from .triton_process import ServeError, TritonServer

log = logging.getLogger("jina_triton")


def check_gateway(options: ServeOptions) -> None:
    """What the gateway would refuse at start, found before Triton starts."""
    from .gateway.__main__ import GatewayConfigError, check_exposure, read_keys

    try:
        read_keys(options.admin_key_file, ADMIN_KEY_ENV)
        check_exposure(options.gateway_host, read_keys(options.api_key_file, API_KEY_ENV), options.allow_anonymous)
    except (GatewayConfigError, OSError) as exc:
        raise ServeError(str(exc)) from None


class RestartBudget:
    def __init__(self, per_minute: int):
        self.per_minute, self.times = per_minute, deque()

    def allow(self) -> bool:
        now = time.monotonic()
        while self.times and now - self.times[0] > 60:
            self.times.popleft()
        if len(self.times) >= self.per_minute:
            return False
        self.times.append(now)
        return True

    def pause(self) -> float:
        return min(10.0, 0.5 * 2 ** max(0, len(self.times) - 1))


class Status:
    """What the gateway's /ready reads: Triton up or not, models with a dead stub."""

    def __init__(self, path: Path):
        self.path = path
        self.state = {"triton": "starting", "down": [], "restarts": 0, "pid": os.getpid()}
        self.write()

    def update(self, **changes) -> None:
        self.state.update(changes)
        self.write()

    def write(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.state))
        os.replace(partial, self.path)


def banner(message: str) -> None:
    log.warning("\n%s\n%s\n%s", "!" * 78, message, "!" * 78)


def example_request(http_url: str, task: str = "retrieval") -> str:
    return (f"curl -s http://{http_url}/v2/models/{ensemble_name(task)}/infer -H 'Content-Type: application/json' "
            "-d '{\"inputs\":[{\"name\":\"text\",\"shape\":[1,1],\"datatype\":\"BYTES\","
            "\"data\":[\"how do I reset my router?\"]}],\"parameters\":{\"input_type\":\"query\","
            "\"dimensions\":256},\"outputs\":[{\"name\":\"embeddings\"}]}'")


def start_gateway(options: ServeOptions, server: TritonServer, status: Path, limits: dict,
                  tasks: tuple[str, ...]) -> subprocess.Popen:
    """The gateway in its own process: it holds the keys (from the environment or files, never argv),
    cuts requests to the repository's limits and knows the tasks served."""
    command = gateway_command(server.grpc_url, "--triton-metrics", server.metrics_url, *options.gateway_arguments(),
                              "--max-request-tokens", str(limits["max_request_tokens"]),
                              "--max-length", str(limits["max_length"]), "--tasks", ",".join(tasks))
    env = {**os.environ, STATUS_FILE_ENV: str(status), LOCK_KEY_ENV: server.security.lock_key}
    return subprocess.Popen(guarded(command), env=env)


def effective_limits(manifest: dict, lowered: dict) -> dict:
    """The repository's limits as this run serves them: lowered, never raised."""
    built = manifest["options"]
    return {name: min(built[name], value) if value else built[name]
            for name, value in {**{n: None for n in ("max_length", "max_request_tokens")}, **lowered}.items()
            if name in built}


def served_tasks(manifest: dict, asked: str) -> tuple[str, ...]:
    """--tasks against what the repository holds: a task it was not built with is an error."""
    built = tuple(manifest["tasks"])
    try:
        wanted = task_list(asked) if asked else built
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    missing = [task for task in wanted if task not in built]
    if missing:
        raise ServeError(f"the repository holds no {missing[0]!r} task (it was built with --tasks "
                         f"{','.join(built)}): build it again with that task, or serve {', '.join(built)}")
    return wanted


def serve(repository: Path, settings: ServeOptions) -> int:
    manifest = read_manifest(repository)
    tasks = served_tasks(manifest, settings.tasks)
    if settings.gateway:
        check_gateway(settings)
    if manifest["checkpoint"]["synthetic"]:
        banner(f"SERVING A {manifest['checkpoint']['label']}")
    with tempfile.TemporaryDirectory(prefix="jina-triton-") as runtime:
        server = TritonServer.from_options(repository, settings,
                                           None if tasks == tuple(manifest["tasks"]) else task_models(tasks))
        status = Status(Path(runtime) / "status.json")
        gateway = None

        def stop(signum, _frame):  # no waiting in here: the main thread waits below
            server.stop_requested = True
            log.info("signal %d: stopping", signum)
            server.terminate()
            if gateway and gateway.poll() is None:
                gateway.terminate()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        budget = RestartBudget(settings.max_restarts)
        code = 0
        while not server.stop_requested:
            server.start()
            try:
                failed = server.wait_ready(settings.ready_timeout)
            except ServeError:
                if server.stop_requested:
                    break
                raise
            for model, reason in failed.items():
                log.error("%s did not load and stays down (the other models serve): %s", model, reason)
            status.update(triton="up", down=sorted(failed))
            StubSupervisor(server, on_change=lambda down: status.update(down=sorted(set(down) | set(failed)))).start()
            if settings.gateway and gateway is None:
                gateway = start_gateway(settings, server, status.path, effective_limits(manifest, settings.limits),
                                        tasks)
                try:  # "ready" only once the gateway it names answers
                    wait_listening(gateway, settings.gateway_host, settings.gateway_port)
                except RuntimeError as exc:
                    gateway.kill()
                    server.stop()
                    raise ServeError(str(exc)) from None
                log.info("gateway: http%s://%s:%d/v1/embeddings", "s" if settings.gateway_tls_cert else "",
                         settings.gateway_host, settings.gateway_port)
            log.info("ready: gRPC %s, HTTP http://%s, metrics %s", server.grpc_url, server.http_url, server.metrics_url)
            log.info("try: %s", example_request(server.http_url, tasks[0]))
            code = server.wait()
            if server.stop_requested:
                break
            status.update(triton="restarting", restarts=status.state["restarts"] + 1)
            cleared = server.clear_shm()
            log.error("tritonserver exited with code %s; cleared %d shared-memory region(s) it left", code,
                      len(cleared))
            if not budget.allow():
                log.error("tritonserver died %d times within a minute: giving up", settings.max_restarts)
                break
            pause = budget.pause()
            log.warning("restarting tritonserver in %.1f s", pause)
            time.sleep(pause)
        if gateway and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(30)
        stopped = server.stop_requested
        server.stop()  # its shared memory cleared, its snapshot released
        return 0 if stopped else 1  # asked to stop: 0; gave up on a tritonserver that keeps dying: 1
