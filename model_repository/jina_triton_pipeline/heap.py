"""Handing freed heap memory back to the system, in every Python-backend stub.

glibc keeps what a process frees for its own reuse: the tokenizer's parse of tokenizer.json
(~90 MB), an engine's first pass and every pass's activations stay resident in each stub for
good, freed but never returned. `malloc_trim(0)` returns every whole free page (measured on the
full model: preprocess 155 -> 63 MB after loading the tokenizer; an encoder stub 227 -> 107 MB;
~20 ms for 100 MB, ~5 ms after a 400-token pass). Not while requests keep coming: the next pass
faults every returned page back in (measured in a plain process, int8, trimming after each pass:
5-10 % more CPU per token), and trimming after each short query cost it ~7 ms. So an encoder
trims once it has been idle for IDLE_S after an execute of RELEASE_AFTER_TOKENS or more.
"""
from __future__ import annotations

import ctypes
import threading
import time
from contextlib import contextmanager


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator decides alone
        return None


_TRIM = _malloc_trim()
RELEASE_AFTER_TOKENS = 512  # computed tokens of one execute that make its heap worth returning
IDLE_S = 0.25  # under load the next execute comes sooner; a trim then is off every request's path


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class IdleRelease:
    """Returns the free heap once no execute has run for `idle_s` after one that grew it, from a
    thread of its own, so that no request waits for the trim or faults the heap back in."""

    def __init__(self, idle_s: float = IDLE_S, release=release_free_memory):
        self.idle_s, self._release = idle_s, release
        self._changed = threading.Condition()
        self._running, self._grown, self._last = 0, False, time.monotonic()
        threading.Thread(target=self._watch, name="heap-release", daemon=True).start()

    @contextmanager
    def running(self):
        """Around an execute; `grew()` inside it when the execute computed enough to trim after."""
        with self._changed:
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._last = time.monotonic()
                self._changed.notify()

    def grew(self) -> None:
        with self._changed:
            self._grown = True

    def _watch(self) -> None:
        while True:
            with self._changed:
                while not self._grown or self._running:
                    self._changed.wait()
                wait = self._last + self.idle_s - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                self._grown = False
            self._release()
