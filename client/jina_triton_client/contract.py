"""The serving contract (v1): names, parameters and limits shared by every part."""
from __future__ import annotations

CONTRACT_VERSION = 1

# -- the model -------------------------------------------------------------
MODEL_REPO_ID = "jinaai/jina-embeddings-v5-text-nano"
TASKS = ("retrieval", "text-matching", "clustering", "classification")
PREFIXES = {"query": "Query: ", "document": "Document: "}
INPUT_TYPES = tuple(PREFIXES)
DEFAULT_INPUT_TYPE = "document"
MATRYOSHKA_DIMS = (32, 64, 128, 256, 512, 768)
MIN_DIMENSIONS = 32
MAX_DIMENSIONS = 768
DEFAULT_MAX_LENGTH = 8192

# -- truncation --------------------------------------------------------------
TRUNCATE_END = "END"      # drop the last content tokens
TRUNCATE_START = "START"  # drop the earliest content tokens; prefix and EOS stay
TRUNCATE_NONE = "NONE"    # reject a text longer than the max length
TRUNCATE_MODES = (TRUNCATE_END, TRUNCATE_START, TRUNCATE_NONE)
DEFAULT_TRUNCATE = TRUNCATE_END

# -- Triton model names ------------------------------------------------------
PREPROCESS_MODEL = "preprocess"
POSTPROCESS_MODEL = "postprocess"


def _slug(task: str) -> str:
    return task.replace("-", "_")


def ensemble_name(task: str) -> str:
    return f"embed_{_slug(task)}"


def encoder_name(task: str) -> str:
    return f"encoder_{_slug(task)}"


# -- tensors -----------------------------------------------------------------
TEXT = "text"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LAST_HIDDEN_STATE = "last_hidden_state"   # CPU encoders: [n, T, H]
POOLED_STATE = "pooled_state"             # GPU engines pool in the graph: [n, H]
TOKEN_COUNT = "token_count"

OUTPUT_FLOAT = "embeddings"
OUTPUT_INT8 = "embeddings_int8"
OUTPUT_UINT8 = "embeddings_uint8"
OUTPUT_BINARY = "embeddings_binary"
OUTPUT_UBINARY = "embeddings_ubinary"
# client-facing output type -> tensor name
OUTPUTS = {
    "float": OUTPUT_FLOAT,
    "int8": OUTPUT_INT8,
    "uint8": OUTPUT_UINT8,
    "binary": OUTPUT_BINARY,
    "ubinary": OUTPUT_UBINARY,
}
PACKED_OUTPUTS = ("binary", "ubinary")

# -- request parameters ------------------------------------------------------
PARAM_INPUT_TYPE = "input_type"
PARAM_DIMENSIONS = "dimensions"
PARAM_TRUNCATE = "truncate"
PARAMETERS = (PARAM_INPUT_TYPE, PARAM_DIMENSIONS, PARAM_TRUNCATE)

# -- limits (defaults: `build` sets them, `serve` may lower them) --------------
DEFAULT_MAX_BATCH_SIZE = 64          # texts per request (Triton's max_batch_size)
DEFAULT_MAX_TEXT_BYTES = 128 * 1024  # UTF-8 bytes per text (~4x what 8192 tokens need)
DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # UTF-8 bytes of all texts of one request
MIN_MAX_LENGTH = 32                  # the smallest max length a repository may be built with
# `serve` passes its lowered limits to the models through these variables
LIMIT_ENV = {"max_length": "JINA_TRITON_MAX_LENGTH", "max_text_bytes": "JINA_TRITON_MAX_TEXT_BYTES",
             "max_request_bytes": "JINA_TRITON_MAX_REQUEST_BYTES"}

# -- access control ------------------------------------------------------------
# APIs that change or reveal the server's setup: behind the admin key.
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "logging", "trace")
ADMIN_KEY_HEADER = "admin-key"
API_KEY_HEADER = "api-key"            # inference, when serve is given an API key
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton's gRPC restricted-protocol headers
