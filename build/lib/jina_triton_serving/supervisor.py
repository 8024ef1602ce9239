"""Keeping a Triton server whole: reload models whose Python stub died.

Triton 2.51 does not restart a dead Python stub: its model answers "Stub process ...
is not healthy" for good. The supervisor notices a stub gone from the process tree and
reloads that model (unload, then load: a plain load of an unchanged model is a no-op),
backing off when a reload fails and logging what it does. Stubs are counted per model
version: a version that is not READY (an admin unloaded it, a new version replaced it, it is
loading) is left alone.
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
        self.down: list[str] = []
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
            missing = {key for key, count in expected.items() if current.get(key, 0) < count}
            for key in sorted(missing):
                if time.monotonic() < next_try.get(key, 0.0) or not self._alive(process):
                    continue
                model = key[0]
                try:
                    state = self.server.repository_index().get(key)
                    if state != "READY":
                        log.info("%s version %s has fewer stubs and is %s: left alone (unloaded or replaced)",
                                 model, key[1], state or "gone")
                        expected.pop(key, None)
                        missing.discard(key)
                        continue
                    self.server.model_action(model, "unload")
                    self.server.model_action(model, "load")
                    self.reloads += 1
                    failures.pop(key, None)
                    log.warning("a Python stub of %s died: model reloaded", model)
                except (urllib.error.URLError, OSError) as exc:
                    failures[key] = failures.get(key, 0) + 1
                    pause = min(self.max_backoff, 2.0 ** failures[key])
                    next_try[key] = time.monotonic() + pause
                    log.error("reloading %s failed (%s); next try in %.0f s", model, exc, pause)
            down = sorted({model for model, _ in missing})
            if down != self.down:
                self.down = down
                self.on_change(down)
            for key, count in self.server.stubs().items():  # instances come up late, admins load models
                expected[key] = max(count, expected.get(key, 0))
