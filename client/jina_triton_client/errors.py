"""How a failed request reaches the caller: one classification of the server's answers.

Triton's wording is read here and nowhere else. `classify(status, message)` gives a Failure
kind; the retry policy decides on the kind, the gateway maps the kind to an HTTP status in one
table. A change in Triton's wording then breaks this file only (tests/test_errors.py pins it).
"""
from __future__ import annotations

import enum
import re


class Failure(enum.Enum):
    INVALID = "invalid"            # the request itself: retrying cannot help
    NOT_FOUND = "not found"        # no such model (a task this server does not serve)
    FORBIDDEN = "forbidden"        # a restricted API called without its key
    OVERLOADED = "overloaded"      # a full queue, a request that waited past its timeout
    UNAVAILABLE = "unavailable"    # no server answering: down, restarting, draining
    STUB_CRASHED = "stub crashed"  # the Python stub serving the request died
    RELOADING = "reloading"        # the model is being reloaded after a crash
    DEADLINE = "deadline"          # the caller's own deadline passed
    INTERNAL = "internal"          # anything else

    @property
    def retryable(self) -> bool:
        return self in (Failure.OVERLOADED, Failure.UNAVAILABLE, Failure.STUB_CRASHED, Failure.RELOADING)


# Triton 2.51's wording, one phrase per kind (and the encoders' own for a request whose caller left)
OVERLOADED_SIGNS = ("Exceeds maximum queue size", "Request timeout expired", "cancelled: the caller gave up")
STUB_CRASH_SIGN = "is not healthy"                        # "Stub process 'encoder_x_0_1' is not healthy."
RELOADING_SIGN = "has no available versions"              # a model between its unload and its load
RESTRICTED_SIGN = "is restricted"                         # "This protocol is restricted, expecting header ..."
DEAD_INSTANCE = re.compile(r"Stub process '([^']+)' is not healthy")
ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


def classify(status: str, message: str) -> Failure:
    """The kind of a failed call, from its gRPC status name and Triton's message."""
    if RESTRICTED_SIGN in message:
        return Failure.FORBIDDEN
    if status == "INVALID_ARGUMENT":
        return Failure.INVALID
    if status in ("UNAVAILABLE", "RESOURCE_EXHAUSTED") and any(sign in message for sign in OVERLOADED_SIGNS):
        return Failure.OVERLOADED
    if status == "INTERNAL" and STUB_CRASH_SIGN in message:
        return Failure.STUB_CRASHED
    if status == "NOT_FOUND":
        return Failure.RELOADING if RELOADING_SIGN in message else Failure.NOT_FOUND
    if status in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"):  # CANCELLED: a draining server dropped it
        return Failure.UNAVAILABLE
    if status == "DEADLINE_EXCEEDED":
        return Failure.DEADLINE
    return Failure.INTERNAL


class EmbeddingError(RuntimeError):
    """The server refused or failed a request (after retries, where retrying made sense)."""

    def __init__(self, status: str, message: str, endpoint: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (endpoint {endpoint})" if endpoint else ""))
        self.status = status
        self.message = message
        self.endpoint = endpoint

    @property
    def failure(self) -> Failure:
        return classify(self.status, self.message)

    @property
    def cause(self) -> str:
        """The message without Triton's routing prefix (`in ensemble 'embed_x', `)."""
        return ENSEMBLE_PREFIX.sub("", self.message)


def status_of(exc: Exception) -> str:
    """'UNAVAILABLE' etc. from a tritonclient exception."""
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    return str(status or "UNKNOWN").replace("StatusCode.", "")


def message_of(exc: Exception) -> str:
    return exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)


def remap_text_index(message: str, indices: list[int]) -> str:
    """The server names text[i] of one request; the caller wants its own index."""
    return re.sub(r"text\[(\d+)\]", lambda m: f"text[{indices[int(m.group(1))]}]"
                  if int(m.group(1)) < len(indices) else m.group(0), message)
