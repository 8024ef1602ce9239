"""The embeddings API: OpenAI's shape with Jina's fields, parsed into one call and answered.

    POST /v1/embeddings
      input            a string or a list of strings (or of {"text": ...}); token arrays are refused
      model            jina-embeddings-v5-text-nano, or a task's own name (see MODELS)
      task             retrieval.query | retrieval.passage | text-matching | clustering | classification
      dimensions       32..768 (Matryoshka)
      encoding_format  float | base64 (OpenAI)
      embedding_type   float | base64 | binary | ubinary | int8 | uint8 (Jina)
      normalized       true (default) | false: the raw state, float types only
      truncate         true | false (Jina) or END | START | NONE
      user             accepted, logged as given

Every problem is an ApiError naming the field, rendered in OpenAI's error body.
"""
from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass

import numpy as np
import orjson

from jina_triton_client.errors import EmbeddingError, Failure
from jina_triton_client.contract import (
    MAX_DIMENSIONS, MIN_DIMENSIONS, MODEL_NAME, TASKS, TRUNCATE_END, TRUNCATE_MODES, TRUNCATE_NONE)

# Jina task names -> (adapter, input type)
JINA_TASKS = {
    "retrieval.query": ("retrieval", "query"),
    "retrieval.passage": ("retrieval", "document"),
    "text-matching": ("text-matching", "document"),
    "clustering": ("clustering", "document"),
    "separation": ("clustering", "document"),   # Jina's older name for clustering
    "classification": ("classification", "document"),
}
DEFAULT_TASK = "retrieval.passage"
# model name -> the task it implies (None: take `task`, default retrieval.passage)
MODELS = {MODEL_NAME: None, f"{MODEL_NAME}-retrieval": "retrieval.passage",
          f"{MODEL_NAME}-retrieval-query": "retrieval.query", f"{MODEL_NAME}-retrieval-passage": "retrieval.passage",
          f"{MODEL_NAME}-text-matching": "text-matching", f"{MODEL_NAME}-clustering": "clustering",
          f"{MODEL_NAME}-classification": "classification"}
EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary", "int8", "uint8")
ENCODING_FORMATS = ("float", "base64")
assert {adapter for adapter, _ in JINA_TASKS.values()} == set(TASKS)


@dataclass(frozen=True)
class Field:
    """One request field: its JSON Schema (what parse() enforces for it: the enums and bounds below
    are the ones it checks), what the OpenAPI document says of it, and whether null means absent."""
    schema: dict
    description: str
    nullable: bool = False


def _any_case(words) -> str:
    """A JSON Schema pattern (no flags there) for these words in any letter case, as _truncate takes them."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word) for word in words)
    return "^(?:" + "|".join(spelled) + ")$"


_TEXT = {"type": "string", "minLength": 1}
REQUEST = {
    "input": Field({"oneOf": [_TEXT, {"type": "array", "minItems": 1, "items": {"oneOf": [
        _TEXT, {"type": "object", "properties": {"text": _TEXT}, "required": ["text"],
                "additionalProperties": False}]}}]},
        "a text or a list of texts (or of {\"text\": ...}); token-id arrays are refused"),
    "model": Field({"type": "string", "enum": list(MODELS), "default": MODEL_NAME},
                   "the bare name (its task from `task`), or a task's own name; GET /v1/models lists the served ones"),
    "task": Field({"type": "string", "enum": list(JINA_TASKS), "default": DEFAULT_TASK},
                  "the LoRA adapter and the prefix: retrieval.query / retrieval.passage add 'Query: ' / 'Document: '",
                  nullable=True),
    "dimensions": Field({"type": "integer", "minimum": MIN_DIMENSIONS, "maximum": MAX_DIMENSIONS,
                         "default": MAX_DIMENSIONS},
                        "Matryoshka: the first N dimensions, normalized again; binary types need a multiple of 8",
                        nullable=True),
    "encoding_format": Field({"type": "string", "enum": list(ENCODING_FORMATS)},
                             "OpenAI's: how float embeddings travel (base64: little-endian float32)", nullable=True),
    "embedding_type": Field({"type": "string", "enum": list(EMBEDDING_TYPES), "default": "float"},
                            "Jina's: float, base64, or quantized (int8, uint8; binary, ubinary packed 8 per byte)",
                            nullable=True),
    "normalized": Field({"type": "boolean", "default": True}, "false: the raw pooled state (float types only)"),
    "truncate": Field({"oneOf": [{"type": "boolean"}, {"type": "string", "pattern": _any_case(TRUNCATE_MODES)}],
                       "default": True},
                      f"true / END: cut long texts at the end; START: keep the end; false / NONE: refuse them "
                      f"({', '.join(TRUNCATE_MODES)}, any case)", nullable=True),
    "user": Field({"type": "string"}, "accepted and logged as given", nullable=True),
}
FIELDS = set(REQUEST)


def _choice(body: dict, name: str):
    """A field whose values are its schema's enum (None when absent)."""
    value, allowed = body.get(name), REQUEST[name].schema["enum"]
    if value is not None and (not isinstance(value, str) or value not in allowed):
        raise invalid(name, f"must be one of {', '.join(allowed)}")
    return value
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
LOGGED_CHARS = 128


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.retry_after = status, message, param, kind, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def invalid(param: str, rule: str) -> ApiError:
    return ApiError(400, f"{param}: {rule}", param)


def unauthorized(what: str) -> ApiError:
    return ApiError(401, f"missing or wrong {what}: send 'Authorization: Bearer <key>'", None, "authentication_error")


# Each kind of server failure (jina_triton_client.errors.Failure) as the API answers it: the one table.
# A model Triton does not find is one that is down (reloading, unloaded): the gateway itself refuses
# a task it does not serve before asking Triton.
HTTP_STATUS = {Failure.INVALID: 400, Failure.OVERLOADED: 429, Failure.NOT_FOUND: 503, Failure.UNAVAILABLE: 503,
               Failure.STUB_CRASHED: 503, Failure.RELOADING: 503, Failure.DEADLINE: 503, Failure.FORBIDDEN: 500,
               Failure.INTERNAL: 500}
assert set(HTTP_STATUS) == set(Failure)


def server_error(exc: EmbeddingError, retry_after: int) -> ApiError:
    """Triton's answer, in the API's terms: its field names (input, not text) and no internals."""
    status = HTTP_STATUS[exc.failure]
    message = exc.cause.replace("text[", "input[")
    if status == 400:
        return ApiError(400, message, message.split(":", 1)[0] if ":" in message else None)
    if status == 429:
        return ApiError(429, "the server is overloaded; retry after the time in Retry-After", None, "rate_limit_error",
                        retry_after)
    if status == 503:
        return ApiError(503, "the embedding backend is not available; retry later", None, "server_error", retry_after)
    return ApiError(500, message if message.startswith("internal error, id") else "internal error", None,
                    "server_error")


@dataclass(frozen=True)
class EmbedCall:
    texts: list[str]
    model: str
    task: str            # the Jina task name
    adapter: str
    input_type: str
    dimensions: int
    embedding_type: str
    normalized: bool
    truncate: str
    user: str | None

    @property
    def output(self) -> str:
        """The client output type that carries this embedding type."""
        if self.embedding_type in ("float", "base64"):
            return "float" if self.normalized else "unnormalized"
        return self.embedding_type


def request_id(header: str | None) -> str:
    """The caller's x-request-id when it is a plain token, else one of ours (it goes into logs and to Triton)."""
    return header if header is not None and REQUEST_ID.fullmatch(header) else uuid.uuid4().hex


def loggable(value: str | None) -> str | None:
    return value if value is None or len(value) <= LOGGED_CHARS else value[:LOGGED_CHARS] + "..."


def _separators(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b"{") + text.count(b":")


def json_values_bound(body: bytes, most: int) -> int:
    """An upper bound of the JSON values in `body` (or a number over `most`), in linear time and
    without building anything: every value but the first follows a separator outside strings."""
    raw = _separators(body)
    if raw <= most:
        return raw
    cleaned = body.replace(b"\\\\", b"").replace(b'\\"', b"")   # now every quote delimits a string
    strings = cleaned.count(b'"') // 2
    if strings > most:
        return strings
    return _separators(STRING.sub(b"", cleaned))


def load_json(body: bytes, max_inputs: int):
    """Parse a body whose parsed size is bounded: Python objects cost up to ~50x the bytes of
    `[{},{},...]`, so the values are bounded before anything is built; nesting deeper than
    orjson's limit (1024) is refused too."""
    most = 2 * max_inputs + 64
    if json_values_bound(body, most) > most:
        raise invalid("body", f"holds more than {most} JSON values; a request has at most {max_inputs} inputs "
                              f"and a few fields")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise invalid("body", "is not valid JSON (or nests deeper than 1024 levels)") from None


def _texts(value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise invalid("input", "must be a string or a non-empty list of strings")
    texts = []
    for index, item in enumerate(value):
        if isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if isinstance(item, (int, list)) and not isinstance(item, bool):
            raise invalid("input", "token arrays are not supported; send the text itself")
        if not isinstance(item, str):
            raise invalid(f"input[{index}]", "must be a string")
        if not item:
            raise invalid(f"input[{index}]", "is empty")
        texts.append(item)
    return texts


def _task(body: dict, model: str) -> str:
    implied = MODELS[model]
    task = _choice(body, "task")
    if task is None:
        return implied or DEFAULT_TASK
    if implied and JINA_TASKS[task][0] != JINA_TASKS[implied][0]:
        raise invalid("task", f"{task!r} does not match model {model!r}; send the bare model name {MODEL_NAME!r} "
                              f"with a task")
    return task


def _dimensions(value) -> int:
    schema = REQUEST["dimensions"].schema
    low, high = schema["minimum"], schema["maximum"]
    if value is None:
        return schema["default"]
    if isinstance(value, float) and value.is_integer():  # JSON has one number type: 256.0 is the integer 256
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("dimensions", f"must be an integer from {low} to {high}")
    if not low <= value <= high:
        raise invalid("dimensions", f"must be from {low} to {high}, got {value}")
    return value


def _embedding_type(body: dict) -> str:
    """Jina's embedding_type decides; OpenAI's encoding_format chooses how floats travel (the openai
    package asks for base64 on its own and decodes it; integer types are left as they are)."""
    encoding, kind = _choice(body, "encoding_format"), _choice(body, "embedding_type")
    if kind in (None, "float", "base64"):
        return encoding or kind or "float"
    return kind


def _truncate(value) -> str:
    if value is None or value is True:
        return TRUNCATE_END
    if value is False:
        return TRUNCATE_NONE
    if isinstance(value, str) and value.upper() in TRUNCATE_MODES:
        return value.upper()
    raise invalid("truncate", f"must be true, false or one of {', '.join(TRUNCATE_MODES)}")


def parse(body, max_inputs: int, served: tuple[str, ...] = TASKS) -> EmbedCall:
    """A checked request; `served`: the tasks (adapters) this server runs, a request for another is a 404."""
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise invalid(unknown[0], f"unknown field; allowed: {', '.join(sorted(FIELDS))}")
    if "input" not in body:
        raise invalid("input", "is required")
    texts = _texts(body["input"])
    if len(texts) > max_inputs:
        raise invalid("input", f"holds {len(texts)} texts, more than the limit of {max_inputs} per request")
    model = body.get("model", MODEL_NAME)
    if not isinstance(model, str):
        raise invalid("model", "must be a string; GET /v1/models lists the models")
    if model not in REQUEST["model"].schema["enum"]:
        raise ApiError(404, f"model: {model!r} does not exist; GET /v1/models lists the models", "model",
                       "not_found_error")
    task = _task(body, model)
    normalized = body.get("normalized", True)
    if not isinstance(normalized, bool):
        raise invalid("normalized", "must be true or false")
    embedding_type = _embedding_type(body)
    if not normalized and embedding_type not in ("float", "base64"):
        raise invalid("normalized", f"false applies to float and base64 embeddings, not {embedding_type}")
    dimensions = _dimensions(body.get("dimensions"))
    if embedding_type in ("binary", "ubinary") and dimensions % 8:
        raise invalid("dimensions", f"must be divisible by 8 for embedding_type {embedding_type!r}, got {dimensions}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "must be a string")
    adapter, input_type = JINA_TASKS[task]
    if adapter not in served:
        raise ApiError(404, f"task: {task!r} is not served here; this server serves {', '.join(served)} "
                            f"(GET /v1/models lists the models)", "task" if "task" in body else "model",
                       "not_found_error")
    return EmbedCall(texts, model, task, adapter, input_type, dimensions, embedding_type, normalized,
                     _truncate(body.get("truncate")), user)


def encode(vector: np.ndarray, embedding_type: str):
    """One row as the API sends it: floats, base64 of little-endian float32, or integers."""
    if embedding_type == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return vector.tolist()


def answer(call: EmbedCall, vectors: np.ndarray, token_counts: np.ndarray) -> dict:
    tokens = int(np.asarray(token_counts).sum())
    return {"object": "list", "model": call.model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(row, call.embedding_type)}
                     for i, row in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def models_list(created: int, served: tuple[str, ...] = TASKS) -> dict:
    """The models whose task is served (the bare name's is its default task, retrieval.passage)."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "jinaai",
                                        "task": task or DEFAULT_TASK} for name, task in MODELS.items()
                                       if JINA_TASKS[task or DEFAULT_TASK][0] in served]}
