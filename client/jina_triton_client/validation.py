"""Request-parameter rules, shared by the client (before sending) and the server.

Every message names the field and the rule; nothing else (no types, paths or
tracebacks) reaches the caller.
"""
from __future__ import annotations

from dataclasses import dataclass

from .contract import (
    DEFAULT_INPUT_TYPE, DEFAULT_TRUNCATE, FORWARDED_HEADERS, INPUT_TYPES, MAX_DIMENSIONS, MIN_DIMENSIONS,
    PARAM_DIMENSIONS, PARAM_INPUT_TYPE, PARAM_TRUNCATE, PARAMETERS, TRUNCATE_MODES)

# Parameters Triton or its clients may attach on their own; never ours to reject.
TRITON_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id",
                               "sequence_start", "sequence_end", "headers"})


class InvalidArgument(ValueError):
    """A request the server must refuse with INVALID_ARGUMENT."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Options:
    input_type: str = DEFAULT_INPUT_TYPE
    dimensions: int = MAX_DIMENSIONS
    truncate: str = DEFAULT_TRUNCATE


def parse_options(parameters: dict, width: int = MAX_DIMENSIONS) -> Options:
    """Validate request parameters; missing ones take their defaults."""
    # forwarded headers keep their case over HTTP (X-Request-Id)
    unknown = sorted(name for name in parameters if name not in PARAMETERS and name not in TRITON_PARAMETERS
                     and name.lower() not in FORWARDED_HEADERS)
    if unknown:
        raise InvalidArgument(unknown[0], f"unknown parameter; allowed: {', '.join(PARAMETERS)}")
    return Options(
        input_type=check_input_type(parameters.get(PARAM_INPUT_TYPE, DEFAULT_INPUT_TYPE)),
        dimensions=check_dimensions(parameters.get(PARAM_DIMENSIONS, width), width),
        truncate=check_truncate(parameters.get(PARAM_TRUNCATE, DEFAULT_TRUNCATE)))


def check_input_type(value) -> str:
    if not isinstance(value, str) or value.lower() not in INPUT_TYPES:
        raise InvalidArgument(PARAM_INPUT_TYPE, f"must be one of {', '.join(repr(t) for t in INPUT_TYPES)}")
    return value.lower()


def check_truncate(value) -> str:
    if not isinstance(value, str) or value.upper() not in TRUNCATE_MODES:
        raise InvalidArgument(PARAM_TRUNCATE, f"must be one of {', '.join(repr(m) for m in TRUNCATE_MODES)}")
    return value.upper()


def check_dimensions(value, width: int = MAX_DIMENSIONS) -> int:
    upper = min(width, MAX_DIMENSIONS)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(PARAM_DIMENSIONS, f"must be an integer from {MIN_DIMENSIONS} to {upper}")
    if not MIN_DIMENSIONS <= value <= upper:
        raise InvalidArgument(PARAM_DIMENSIONS, f"must be from {MIN_DIMENSIONS} to {upper}, got {value}")
    return value
