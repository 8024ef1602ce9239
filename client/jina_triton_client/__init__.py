"""Client for the jina-embeddings-v5-text-nano Triton model repository.

    from jina_triton_client import EmbeddingClient
    with EmbeddingClient("127.0.0.1:8001") as client:
        vectors = client.embed(["how do I reset my router?"], task="retrieval", input_type="query")

`contract` holds what clients send and receive (model names, tensors, request
parameters, limits); the server's models import it from here, so the client
installs on its own.
"""
from .errors import EmbeddingError
from .planning import Embedded, Limits
from .retry import RetryPolicy
from .validation import InvalidArgument


def __getattr__(name):  # the clients import tritonclient; load them only when asked for
    if name == "EmbeddingClient":
        from .client import EmbeddingClient
        return EmbeddingClient
    if name == "AsyncEmbeddingClient":
        from .aio import AsyncEmbeddingClient
        return AsyncEmbeddingClient
    raise AttributeError(name)


__all__ = ["EmbeddingClient", "AsyncEmbeddingClient", "Embedded", "EmbeddingError", "InvalidArgument",
           "Limits", "RetryPolicy"]
