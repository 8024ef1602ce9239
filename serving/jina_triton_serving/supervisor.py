"""Keeping a Triton server whole: reload models whose Python stub died.

Triton 2.51 does not restart a dead Python stub: its model answers "Stub process ...
is not healthy" for good. The supervisor notices a stub gone from the process tree and
reloads that model (unload, then load: a plain load of an unchanged model is a no-op),
backing off when a reload fails and logging what it does. A model that is not READY
(an admin unloaded it, or it is loading) is left alone.
"""
from __future__ import annotations

import logging
import threading
import time
import urllib.error

log = logging.getLogger("jina_triton.supervisor")


class StubSupervisor:
    def __init__(self, server, interval: float = 1.0, max_backoff: float = 30.0, on_change=None):
        self.server, self.interval, self.max_backoff = server, interval, max_backoff
        self.on_change = on_change or (lambda down: None)
        self.down: set[str] = set()
        self.reloads = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="stub-supervisor", daemon=True)
        thread.start()
        return thread

    def _alive(self, process) -> bool:
        return self.server.process is process and process.poll() is None and not self.server.stop_requested

    def _run(self) -> None:
        process = self.server.process
        expected = self.server.stubs()
        failures: dict[str, int] = {}
        next_try: dict[str, float] = {}
        while self._alive(process):
            time.sleep(self.interval)
            current = self.server.stubs()
            missing = {model for model, count in expected.items() if current.get(model, 0) < count}
            if missing != self.down:
                self.down = missing
                self.on_change(sorted(missing))
            for model in sorted(missing):
                if time.monotonic() < next_try.get(model, 0.0) or not self._alive(process):
                    continue
                try:
                    state = self.server.repository_index().get(model)
                    if state != "READY":
                        log.info("%s has fewer stubs and is %s: left alone (unloaded by an admin?)", model, state)
                        expected.pop(model, None)
                        continue
                    self.server.model_action(model, "unload")
                    self.server.model_action(model, "load")
                    self.reloads += 1
                    failures.pop(model, None)
                    log.warning("a Python stub of %s died: model reloaded", model)
                except (urllib.error.URLError, OSError) as exc:
                    failures[model] = failures.get(model, 0) + 1
                    pause = min(self.max_backoff, 2.0 ** failures[model])
                    next_try[model] = time.monotonic() + pause
                    log.error("reloading %s failed (%s); next try in %.0f s", model, exc, pause)
            for model, count in self.server.stubs().items():  # instances come up late, admins load models
                expected[model] = max(count, expected.get(model, 0))
