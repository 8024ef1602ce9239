"""Keeping a Triton server whole: reload models whose Python stub died.

Triton 2.51 does not restart a dead Python stub: its model answers "Stub process ...
is not healthy" for good. The supervisor notices a stub gone from the process tree and
reloads that model (unload, then load: a plain load of an unchanged model is a no-op),
backing off when a reload fails and logging what it does. Stubs are watched per model
version: a version that is not READY (an admin unloaded it, a new version replaced it, it is
loading) is left alone.

When a request was running on the stub that died, Triton never finishes unloading the
broken instance: its surviving stubs linger, holding the model's memory. They serve nobody
once the reload is done; the supervisor stops them as soon as they have been idle for a few
seconds (Triton may leave them as zombies, which hold no memory).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.error
from pathlib import Path

log = logging.getLogger("jina_triton.supervisor")


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU ticks of a process; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


class Retired:
    """Stubs of a replaced instance: stopped once idle for `idle_s` (a busy one finishes first)."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        self.watch: dict[int, tuple[int | None, float]] = {}  # pid -> (ticks, idle since)

    def add(self, pids) -> None:
        for pid in pids:
            self.watch[pid] = (cpu_ticks(pid), time.monotonic())

    def pids(self) -> set[int]:
        return set(self.watch)

    def sweep(self, model_of) -> None:
        now = time.monotonic()
        for pid, (ticks, since) in list(self.watch.items()):
            current = cpu_ticks(pid)
            if current is None:
                del self.watch[pid]
            elif current != ticks:
                self.watch[pid] = (current, now)
            elif now - since >= self.idle_s:
                log.warning("stopping an idle stub of the replaced %s instance (pid %d): it holds memory, serves none",
                            model_of(pid), pid)
                del self.watch[pid]
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


class StubSupervisor:
    def __init__(self, server, interval: float = 1.0, max_backoff: float = 30.0, on_change=None,
                 retire_idle_s: float = 5.0):
        self.server, self.interval, self.max_backoff = server, interval, max_backoff
        self.on_change = on_change or (lambda down: None)
        self.down: list[str] = []
        self.retired = Retired(retire_idle_s)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="stub-supervisor", daemon=True)
        thread.start()
        return thread

    def _alive(self, process) -> bool:
        return self.server.process is process and process.poll() is None and not self.server.stop_requested

    def _run(self) -> None:
        process = self.server.process
        # how many stubs each model version runs: its instance count, read once it is steady.
        # A count above it is a replacement under way (an admin's load starts the new instances
        # before the old ones go); only a count below it is a stub lost.
        expected: dict[tuple[str, str], int] = {k: len(v) for k, v in self.server.stub_pids().items()}
        previous: dict[tuple[str, str], int] = dict(expected)
        failures: dict[tuple[str, str], int] = {}
        next_try: dict[tuple[str, str], float] = {}
        models: dict[int, str] = {}
        while self._alive(process):
            time.sleep(self.interval)
            current = {key: pids - self.retired.pids() for key, pids in self.server.stub_pids().items()}
            counts = {key: len(pids) for key, pids in current.items()}
            for key, pids in current.items():
                models.update(dict.fromkeys(pids, key[0]))
                if key not in expected and counts[key] == previous.get(key):  # a newly loaded version, steady
                    expected[key] = counts[key]
            previous = counts
            missing = {key for key, count in expected.items() if counts.get(key, 0) < count}
            self._publish(missing)  # down while it reloads: /ready says so
            for key in sorted(missing):
                if time.monotonic() < next_try.get(key, 0.0) or not self._alive(process):
                    continue
                try:
                    serving = self._reload(key, current.get(key, set()))
                    if serving is None:
                        expected.pop(key, None)
                    else:
                        expected[key] = len(serving)
                    missing.discard(key)
                    failures.pop(key, None)
                except (urllib.error.URLError, OSError) as exc:
                    failures[key] = failures.get(key, 0) + 1
                    pause = min(self.max_backoff, 2.0 ** failures[key])
                    next_try[key] = time.monotonic() + pause
                    log.error("reloading %s failed (%s); next try in %.0f s", key[0], exc, pause)
            self.retired.sweep(lambda pid: models.get(pid, "?"))
            self._publish(missing)

    def _publish(self, missing: set) -> None:
        down = sorted({model for model, _ in missing})
        if down != self.down:
            self.down = down
            self.on_change(down)

    def _reload(self, key: tuple[str, str], survivors: set[int]) -> set[int] | None:
        """Reload a READY model version that lost a stub: the pids of its new stubs; None when it is
        not READY (left alone)."""
        model = key[0]
        state = self.server.repository_index().get(key)
        if state != "READY":
            log.info("%s version %s has fewer stubs and is %s: left alone (unloaded or replaced)",
                     model, key[1], state or "gone")
            return None
        self.server.model_action(model, "unload")
        self.server.model_action(model, "load")
        now = self.server.stub_pids().get(key, set())
        self.retired.add(survivors & now)
        log.warning("a Python stub of %s died: model reloaded", model)
        return now - self.retired.pids()
