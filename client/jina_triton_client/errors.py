"""How a failed request reaches the caller."""
from __future__ import annotations

import re


class EmbeddingError(RuntimeError):
    """The server refused or failed a request (after retries, where retrying made sense)."""

    def __init__(self, status: str, message: str, endpoint: str | None = None):
        super().__init__(f"{status}: {message}" + (f" (endpoint {endpoint})" if endpoint else ""))
        self.status = status
        self.message = message
        self.endpoint = endpoint


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
