"""Client for the jina-embeddings-v5-text-nano Triton model repository.

    from jina_triton_client import EmbeddingClient
    with EmbeddingClient("127.0.0.1:8001") as client:
        vectors = client.embed(["how do I reset my router?"], task="retrieval", input_type="query")

`contract` is the single source of truth for model names, tensor names,
request parameters and limits; the build, the Triton models and the tests
import it from here so that the client can install on its own.
"""
from ._core import EmbeddingError, RetryPolicy
from .validation import InvalidArgument


def __getattr__(name):  # the clients import tritonclient; load them only when asked for
    if name == "EmbeddingClient":
        from .client import EmbeddingClient
        return EmbeddingClient
    if name == "AsyncEmbeddingClient":
        from .aio import AsyncEmbeddingClient
        return AsyncEmbeddingClient
    raise AttributeError(name)


__all__ = ["EmbeddingClient", "AsyncEmbeddingClient", "EmbeddingError", "InvalidArgument", "RetryPolicy"]
