"""Errors that tell a caller to come back later, and the work a request may bring."""
from __future__ import annotations

import numpy as np

from jina_triton_client.contract import TEXT
from jina_triton_client.validation import InvalidArgument


class Unavailable(RuntimeError):
    """Refused for now (overloaded, cancelled, past its deadline): UNAVAILABLE, retryable."""


def check_request_tokens(token_count: np.ndarray, limit: int) -> None:
    """Tokens after truncation, all texts of one request: a static cap, so retrying cannot help."""
    total = int(np.asarray(token_count).sum())
    if total > limit:
        raise InvalidArgument(TEXT, f"the request holds {total} tokens after truncation, more than the limit "
                              f"of {limit} per request; send fewer texts per request (the project's client "
                              f"splits by tokens)")
