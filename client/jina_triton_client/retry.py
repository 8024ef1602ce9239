"""The one retry policy of both clients: which answers to retry, how long to wait, where next."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from .errors import DEAD_INSTANCE, EmbeddingError, Failure, message_of, remap_text_index, status_of
from .validation import InvalidArgument

# What is retried is what errors.Failure calls retryable: overloaded, unavailable (CANCELLED from a
# draining server among it: this client's own give-up is DEADLINE_EXCEEDED), a stub that crashed
# (once), a model being reloaded. Embedding a text twice is harmless.
SAME_CRASH_S = 10.0  # a dead instance answers "not healthy" until it is reloaded: one crash, not several


@dataclass
class RetryPolicy:
    retries: int = 6           # attempts after the first
    backoff: float = 0.2       # seconds, doubled each retry
    max_backoff: float = 5.0
    stub_crashes: int = 1      # a request a stub died on is retried this often; the next crash is its own

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_backoff, backoff * 2**attempt)]."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))


class RoundRobin:
    """Endpoints in turn; one that answered UNAVAILABLE sits out a cool-down."""

    def __init__(self, items: list[str], cooldown: float = 2.0):
        if not items:
            raise InvalidArgument("url", "at least one endpoint is required")
        self.items = list(items)
        self.cooldown = cooldown
        self._down_until = [0.0] * len(self.items)
        self._turn = 0
        self._lock = threading.Lock()

    def next(self, after: int | None = None) -> int:
        """The next healthy endpoint: in turn, or the one after `after` on a retry."""
        with self._lock:
            if after is None:
                start, self._turn = self._turn, self._turn + 1
            else:
                start = after + 1
            now = time.monotonic()
            for step in range(len(self.items)):
                index = (start + step) % len(self.items)
                if self._down_until[index] <= now:
                    return index
            return start % len(self.items)  # all cooling down: try anyway

    def mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + self.cooldown


def endpoint_list(url) -> list[str]:
    if isinstance(url, str):
        return [part.strip() for part in url.split(",") if part.strip()]
    return list(url)


class Attempts:
    """One request's way through the retry policy, under one deadline for the whole call."""

    def __init__(self, policy: RetryPolicy, endpoints: RoundRobin, indices: list[int], deadline: float | None):
        self.policy, self.endpoints, self.indices, self.deadline = policy, endpoints, indices, deadline
        self.retried = 0
        self.crashes = 0
        self.dead: dict[tuple[int | None, str], float] = {}  # (endpoint, instance) -> when it first failed us
        self.index: int | None = None

    def endpoint(self) -> int:
        self.index = self.endpoints.next(after=self.index)
        return self.index

    def remaining(self) -> float | None:
        """Seconds left for this attempt; None without a deadline."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise EmbeddingError("DEADLINE_EXCEEDED", "the call's deadline passed before an answer came")
        return left

    def failed(self, exc: Exception) -> float:
        """The pause before the next attempt; raises when retrying cannot help."""
        failure = EmbeddingError(status_of(exc), remap_text_index(message_of(exc), self.indices),
                                 self.endpoints.items[self.index])
        kind = failure.failure
        if not kind.retryable:
            raise failure from None  # a bad request or a missing key stays so however often we ask
        if kind is Failure.STUB_CRASHED and self._new_crash(failure.message):
            self.crashes += 1
            if self.crashes > self.policy.stub_crashes:
                raise EmbeddingError(failure.status, failure.message + "; not retried: a stub died on this "
                                     "request twice", failure.endpoint) from None
        if kind in (Failure.UNAVAILABLE, Failure.OVERLOADED):  # the next attempt goes elsewhere first
            self.endpoints.mark_down(self.index)
        if self.retried >= self.policy.retries:
            raise failure from None
        pause = self.policy.delay(self.retried)
        self.retried += 1
        if self.deadline is not None and time.monotonic() + pause >= self.deadline:
            raise failure from None
        return pause

    def _new_crash(self, message: str) -> bool:
        """False when the instance that failed was seen dead moments ago (not reloaded yet)."""
        named = DEAD_INSTANCE.search(message)
        key = (self.index, named.group(1) if named else message)
        now = time.monotonic()
        first = self.dead.get(key)
        if first is not None and now - first < SAME_CRASH_S:
            return False
        self.dead[key] = now
        return True
