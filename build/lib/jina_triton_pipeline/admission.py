"""Errors that tell a caller to come back later."""
from __future__ import annotations


class Unavailable(RuntimeError):
    """Refused for now (overloaded, cancelled, past its deadline): UNAVAILABLE, retryable."""
