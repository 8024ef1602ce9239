"""The gateway's OpenAPI 3.1 document, built from api.REQUEST (the fields parse() enforces) and the
shapes answer() / models_list() / ApiError.body() return, with this server's limits and served
models in it; and the docs page that reads it (assets in docs/, served by the gateway: no CDN)."""
from __future__ import annotations

import copy
from pathlib import Path

from jina_triton_client.contract import MODEL_NAME

from . import api

DOCS = Path(__file__).resolve().parent / "docs"
DOC_ASSETS = {"index.html": "text/html; charset=utf-8", "docs.js": "text/javascript; charset=utf-8",
              "docs.css": "text/css; charset=utf-8"}

# each one this server serves is sent by a test and must be answered 200
EXAMPLES = {
    "query": {"summary": "a search query (retrieval adapter, 'Query: ' prefix)",
              "value": {"model": MODEL_NAME, "task": "retrieval.query", "input": ["how do I reset my router?"]}},
    "documents": {"summary": "documents, 256 Matryoshka dimensions",
                  "value": {"model": MODEL_NAME, "task": "retrieval.passage", "dimensions": 256,
                            "input": ["Unplug the router for ten seconds.", "Hold the reset button for 30 s."]}},
    "binary": {"summary": "clustering, binary-quantized (768 dimensions in 96 bytes)",
               "value": {"model": f"{MODEL_NAME}-clustering", "embedding_type": "ubinary", "input": "a text"}},
    "openai": {"summary": "as the openai package sends it", "value": {"model": MODEL_NAME, "input": ["hello"],
                                                                     "encoding_format": "base64"}},
}

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": "null"}}}}}
_EMBEDDING = {"anyOf": [{"type": "array", "items": {"type": "number"}},
                        {"type": "array", "items": {"type": "integer"}},
                        {"type": "string", "contentEncoding": "base64"}]}
_RESPONSE = {"type": "object", "required": ["object", "model", "data", "usage"], "properties": {
    "object": {"const": "list"}, "model": {"type": "string"},
    "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"],
                                        "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                                                       "embedding": _EMBEDDING}}},
    "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
              "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}}
_MODELS = {"type": "object", "required": ["object", "data"], "properties": {
    "object": {"const": "list"},
    "data": {"type": "array", "items": {"type": "object", "required": ["id", "object", "created", "owned_by", "task"],
                                        "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                                       "created": {"type": "integer"}, "owned_by": {"type": "string"},
                                                       "task": {"type": "string"}}}}}}


def _error_responses(*codes: int) -> dict:
    reasons = {400: "a field is wrong: `error.param` names it", 401: "no or a wrong API key",
               404: "a model or task this server does not serve", 408: "the body did not arrive in time",
               413: "the body is over the size limit",
               429: "overloaded: retry after Retry-After seconds", 503: "the backend is down or reloading: retry"}
    return {str(code): {"description": reasons[code],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code in codes}


def _property(field: api.Field) -> dict:
    schema = copy.deepcopy(field.schema)
    if field.nullable:  # parse() takes null as the field's absence
        schema = {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "description": field.description}


def request_schema(max_inputs: int, served: tuple[str, ...]) -> dict:
    """The request body as parse() takes it on this server: its served models and tasks, its input limit."""
    properties = {name: _property(field) for name, field in api.REQUEST.items()}
    properties["model"]["enum"] = [name for name, task in api.MODELS.items()
                                   if task is None or api.JINA_TASKS[task][0] in served]
    properties["task"]["anyOf"][0]["enum"] = [task for task, (adapter, _) in api.JINA_TASKS.items()
                                              if adapter in served]
    text_list = properties["input"]["oneOf"][1]
    properties["input"]["oneOf"][1] = {**text_list, "maxItems": max_inputs}
    return {"type": "object", "required": ["input"], "additionalProperties": False, "properties": properties}


def examples(max_inputs: int, served: tuple[str, ...]) -> dict:
    """The examples this server answers 200 (a server of some tasks: those of its tasks)."""
    kept = {}
    for name, example in EXAMPLES.items():
        try:
            api.parse(example["value"], max_inputs, served)
            kept[name] = example
        except api.ApiError:
            continue
    if not kept:
        task = next(task for task, (adapter, _) in api.JINA_TASKS.items() if adapter in served)
        kept["served"] = {"summary": f"this server's task {task}", "value": {"model": MODEL_NAME, "task": task,
                                                                            "input": ["a text to embed"]}}
    return kept


def document(max_inputs: int, served: tuple[str, ...], version: str) -> dict:
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{MODEL_NAME} embeddings", "version": version,
                 "description": "OpenAI's /v1/embeddings with Jina's fields, served by NVIDIA Triton."},
        "paths": {
            "/v1/embeddings": {"post": {
                "operationId": "createEmbeddings", "summary": "Embed texts", "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/EmbeddingsRequest"},
                    "examples": examples(max_inputs, served)}}},
                "responses": {"200": {"description": "one embedding per input, in order", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsResponse"}}}},
                    **_error_responses(400, 401, 404, 408, 413, 429, 503)}}},
            "/v1/models": {"get": {
                "operationId": "listModels", "summary": "The models this server serves", "security": secured,
                "responses": {"200": {"description": "the served models", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}}},
                    **_error_responses(401)}}},
            "/ready": {"get": {"operationId": "ready", "summary": "200 when every served model answers",
                               "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/health": {"get": {"operationId": "health", "summary": "200 while the gateway runs",
                                "responses": {"200": {"description": "alive"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an API key: Authorization: Bearer <key>"}},
            "schemas": {"EmbeddingsRequest": request_schema(max_inputs, served), "EmbeddingsResponse": _RESPONSE,
                        "ModelList": _MODELS, "Error": _ERROR},
        },
    }
