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
LAST_HIDDEN_STATE = "last_hidden_state"
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

# -- limits (defaults; the build and `serve` can lower or raise them) ---------
DEFAULT_MAX_BATCH_SIZE = 64          # texts per request
MIN_MAX_LENGTH = 32                  # the smallest max length a repository may be built with
