"""Server internals: the names inside the model repository that no client sees.

What clients send and receive is in `jina_triton_client.contract`; a test checks
every rendered config's tensor and model names against these constants.
"""
from __future__ import annotations

# -- Triton models besides the client-facing ensembles ---------------------------
PREPROCESS_MODEL = "preprocess"
POSTPROCESS_MODEL = "postprocess"


def encoder_name(task: str) -> str:
    return "encoder_" + task.replace("-", "_")


def task_models(tasks) -> list[str]:
    """The Triton models that serve `tasks`: each one's ensemble and encoder, and the shared steps."""
    from jina_triton_client.contract import ensemble_name

    return [PREPROCESS_MODEL, POSTPROCESS_MODEL, *(name for task in tasks
                                                   for name in (encoder_name(task), ensemble_name(task)))]


# -- tensors between the steps of an ensemble ------------------------------------
INPUT_IDS = "input_ids"            # INT64 [n, T], right-padded
ATTENTION_MASK = "attention_mask"  # INT64 [n, T]
POOLED_STATE = "pooled_state"      # FP32 [n, H]: every encoder pools at each text's EOS
TOKENIZE_US = "tokenize_us"        # INT64 [n, 1]: preprocess time of the row's request
ENCODE_US = "encode_us"            # INT64 [n, 1]: encoder time attributed to the row's request

# -- model-config parameters `serve` may lower through the environment -------------
ENV_PREFIX = "JINA_TRITON_"


def limit_env(name: str) -> str:
    """`max_length` -> JINA_TRITON_MAX_LENGTH: how `serve` lowers a built limit."""
    return ENV_PREFIX + name.upper()
