"""What every model.py shares: reading a request (its inputs, parameters, id, whether its caller
gave up), the model's config parameters, and answering with an error.

Errors the caller caused become INVALID_ARGUMENT with the field and the rule; a request
refused for now becomes UNAVAILABLE (retryable); anything else becomes INTERNAL with a
generic message and an id that is also in the server log with the details and the
request id. No traceback, path or type name leaks.
"""
from __future__ import annotations

import json
import traceback
import uuid

from jina_triton_client.contract import REQUEST_ID_HEADER
from jina_triton_client.validation import InvalidArgument

from .limits import Unavailable


def request_parameters(request) -> dict:
    raw = request.parameters()
    return json.loads(raw) if raw else {}


def read_input(pb_utils, request, name: str):
    """An input as numpy (None when the request lacks it)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


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
