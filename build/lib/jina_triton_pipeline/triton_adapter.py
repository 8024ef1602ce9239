"""What every model.py shares: request parameters, text decoding, error responses, metrics.

Errors the caller caused become INVALID_ARGUMENT with the field and the rule; a request
refused for now becomes UNAVAILABLE (retryable); anything else becomes INTERNAL with a
generic message and an id that is also in the server log with the details and the
request id. No traceback, path or type name leaks.
"""
from __future__ import annotations

import json
import os
import traceback
import uuid

import numpy as np

from jina_triton_client.contract import REQUEST_ID_HEADER
from jina_triton_client.validation import InvalidArgument

from .admission import Unavailable
from .internals import limit_env


def request_parameters(request) -> dict:
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def decode_texts(values: np.ndarray | None, field: str, max_text_bytes: int,
                 max_request_bytes: int) -> list[str]:
    """Triton BYTES [n, 1] -> str per text; the field is named in every error.

    Empty texts are refused; whitespace-only texts are embedded (the prefix
    gives them content, as in the official code).
    """
    if values is None:
        raise InvalidArgument(field, "is required")
    if values.ndim != 2 or values.shape[1] != 1:
        raise InvalidArgument(field, f"must have shape [n, 1], got {list(values.shape)}")
    if not all(isinstance(value, (bytes, np.bytes_)) for value in values[:, 0]):
        raise InvalidArgument(field, "must hold UTF-8 strings (BYTES)")
    total = sum(len(value) for value in values[:, 0])
    if total > max_request_bytes:
        raise InvalidArgument(field, f"the request holds {total} bytes of text, more than the "
                              f"limit of {max_request_bytes}; send fewer or shorter texts per request")
    texts = []
    for index, value in enumerate(values[:, 0]):
        if len(value) > max_text_bytes:
            raise InvalidArgument(f"{field}[{index}]", f"has {len(value)} bytes, more than the limit "
                                  f"of {max_text_bytes}")
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{field}[{index}]", "is not valid UTF-8") from None
        if not text:
            raise InvalidArgument(f"{field}[{index}]", "is empty")
        texts.append(text)
    return texts


def request_id(request) -> str:
    """The caller's request id: Triton's own, or the forwarded x-request-id header."""
    try:
        found = request.request_id() if hasattr(request, "request_id") else ""
        if not found:
            found = next((str(v) for k, v in request_parameters(request).items()
                          if k.lower() == REQUEST_ID_HEADER), "")
    except Exception:  # noqa: BLE001 - an id is for the log only
        found = ""
    return found[:128]


def error_response(pb_utils, exc: BaseException, request=None):
    if isinstance(exc, InvalidArgument):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    if isinstance(exc, Unavailable):
        code = getattr(pb_utils.TritonError, "UNAVAILABLE", pb_utils.TritonError.INTERNAL)
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc), code))
    incident = uuid.uuid4().hex[:12]
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    caller = request_id(request) if request is not None else ""
    pb_utils.Logger.log_error(f"internal error {incident} (request id {caller or '-'}): {detail}")
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(f"internal error, id {incident} (see the server log)"))


def cancelled(request) -> bool:
    """True once the caller gave up (Triton >= 23.10; in an ensemble only steps not yet started see it)."""
    try:
        return bool(request.is_cancelled())
    except Exception:  # noqa: BLE001 - older backends: never cancelled
        return False


def model_parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    # an empty string_value may be left out of the JSON altogether
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def limit(parameters: dict[str, str], name: str) -> int:
    """A limit from the model config, lowered (never raised) by `serve` through the environment."""
    value = int(parameters[name])
    override = os.environ.get(limit_env(name))
    return min(value, int(override)) if override else value


TOKENS_METRIC = "jina_encoder_tokens_total"
REQUESTS_METRIC = "jina_model_requests_total"
MIXED_METRIC = "jina_model_mixed_executions_total"
OUTCOMES = {None: "ok", "INVALID_ARG": "invalid", "UNAVAILABLE": "unavailable"}


class ModelMetrics:
    """Triton custom metrics of one model (Python backend >= 23.05; without it, nothing is counted):
    tokens computed (padded) and real through an encoder, the padded/real waste; requests by
    outcome; executions that answered some requests and refused others, the proof that a bad
    request batched with good ones failed alone."""

    def __init__(self, pb_utils, model_name: str, instance: str = ""):
        self.enabled = hasattr(pb_utils, "MetricFamily")
        if not self.enabled:
            return
        counter = pb_utils.MetricFamily.COUNTER
        # the families must outlive their metrics, so they are kept here with them
        self.families = [pb_utils.MetricFamily(name=TOKENS_METRIC, kind=counter,
                                               description="Tokens through the encoder: kind=computed or real"),
                         pb_utils.MetricFamily(name=REQUESTS_METRIC, kind=counter,
                                               description="Requests answered, by outcome"),
                         pb_utils.MetricFamily(name=MIXED_METRIC, kind=counter,
                                               description="Executions whose requests got different outcomes")]
        tokens, requests, mixed = self.families
        labels = {"model": model_name, "instance": instance or model_name}  # one set per stub process
        self.computed = tokens.Metric(labels={**labels, "kind": "computed"})
        self.real = tokens.Metric(labels={**labels, "kind": "real"})
        self.outcomes = {outcome: requests.Metric(labels={**labels, "outcome": outcome})
                         for outcome in (*OUTCOMES.values(), "internal")}
        self.mixed = mixed.Metric(labels=labels)

    def tokens(self, computed: int, real: int) -> None:
        if self.enabled:
            self.computed.increment(computed)
            self.real.increment(real)

    def answered(self, responses: list) -> list:
        """Count each response's outcome; returns the responses."""
        if self.enabled:
            outcomes = [OUTCOMES.get(_code(response), "internal") for response in responses]
            for outcome in outcomes:
                self.outcomes[outcome].increment(1)
            if len(set(outcomes)) > 1:
                self.mixed.increment(1)
        return responses


def _code(response):
    error = response.error() if callable(getattr(response, "error", None)) else getattr(response, "error", None)
    if error is None:
        return None
    code = error.code() if callable(getattr(error, "code", None)) else None
    return {getattr(type(error), "INVALID_ARG", "INVALID_ARG"): "INVALID_ARG",
            getattr(type(error), "UNAVAILABLE", "UNAVAILABLE"): "UNAVAILABLE"}.get(code, "INTERNAL")
