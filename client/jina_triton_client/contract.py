"""The serving contract (v2): what clients send and receive. Server internals live in
`jina_triton_pipeline.internals`; nothing here names a tensor or model a client never sees."""
from __future__ import annotations

CONTRACT_VERSION = 2

# -- the model -------------------------------------------------------------
MODEL_REPO_ID = "jinaai/jina-embeddings-v5-text-nano"
MODEL_NAME = "jina-embeddings-v5-text-nano"
TASKS = ("retrieval", "text-matching", "clustering", "classification")
PREFIXES = {"query": "Query: ", "document": "Document: "}
INPUT_TYPES = tuple(PREFIXES)
DEFAULT_INPUT_TYPE = "document"
DEFAULT_TASK = "retrieval"
MIN_DIMENSIONS = 32
MAX_DIMENSIONS = 768
DEFAULT_MAX_LENGTH = 8192

# -- truncation --------------------------------------------------------------
TRUNCATE_END = "END"      # drop the last content tokens
TRUNCATE_START = "START"  # drop the earliest content tokens; prefix and EOS stay
TRUNCATE_NONE = "NONE"    # reject a text longer than the max length
TRUNCATE_MODES = (TRUNCATE_END, TRUNCATE_START, TRUNCATE_NONE)
DEFAULT_TRUNCATE = TRUNCATE_END


def task_list(text: str | None) -> tuple[str, ...]:
    """`--tasks retrieval,clustering`: the tasks a server builds and serves, in TASKS order; empty: all."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} in --tasks; the tasks are {', '.join(TASKS)}")
    return tuple(task for task in TASKS if task in names) or TASKS


def ensemble_name(task: str) -> str:
    """The Triton model a client calls for a task: one ensemble per adapter."""
    return "embed_" + task.replace("-", "_")


# -- tensors a client sends and receives ---------------------------------------
TEXT = "text"
TOKEN_COUNT = "token_count"   # INT32 [N, 1]: tokens fed to the encoder, prefix and EOS included
TIMINGS = "timings_us"        # INT64 [N, 3]: this request's tokenize, encode, postprocess microseconds
TIMING_PARTS = ("tokenize", "encode", "postprocess")

OUTPUT_FLOAT = "embeddings"
OUTPUT_INT8 = "embeddings_int8"
OUTPUT_UINT8 = "embeddings_uint8"
OUTPUT_BINARY = "embeddings_binary"
OUTPUT_UBINARY = "embeddings_ubinary"
OUTPUT_UNNORMALIZED = "embeddings_unnormalized"   # the Matryoshka slice before L2 normalization
# client-facing output type -> tensor name
OUTPUTS = {
    "float": OUTPUT_FLOAT,
    "int8": OUTPUT_INT8,
    "uint8": OUTPUT_UINT8,
    "binary": OUTPUT_BINARY,
    "ubinary": OUTPUT_UBINARY,
    "unnormalized": OUTPUT_UNNORMALIZED,
}
PACKED_OUTPUTS = ("binary", "ubinary")

# -- request parameters ------------------------------------------------------
PARAM_INPUT_TYPE = "input_type"
PARAM_DIMENSIONS = "dimensions"
PARAM_TRUNCATE = "truncate"
PARAMETERS = (PARAM_INPUT_TYPE, PARAM_DIMENSIONS, PARAM_TRUNCATE)
# Headers Triton forwards to the models as parameters (request id, trace context).
REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
FORWARDED_HEADERS = (REQUEST_ID_HEADER, TRACEPARENT_HEADER)

# -- limits (defaults: `build` sets them, `serve` may lower them) --------------
DEFAULT_MAX_BATCH_SIZE = 64          # texts per request (Triton's max_batch_size)
DEFAULT_MAX_TEXT_BYTES = 128 * 1024  # UTF-8 bytes per text (~4x what 8192 tokens need)
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # UTF-8 bytes of all texts of one request
DEFAULT_MAX_REQUEST_TOKENS = 32768   # tokens of one request after truncation (4 max-length texts)
MIN_MAX_LENGTH = 32                  # the smallest max length a repository may be built with


def token_upper_bound(text: str, input_type: str = DEFAULT_INPUT_TYPE,
                      max_length: int = DEFAULT_MAX_LENGTH) -> int:
    """Tokens a text can cost at most, without the tokenizer: every byte-level BPE token
    holds at least one byte, plus the EOS; truncation caps it at the max length."""
    return min(max_length, len((PREFIXES[input_type] + text).encode("utf-8")) + 1)
