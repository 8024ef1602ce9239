"""Client for the jina-embeddings-v5-text-nano Triton model repository.

`contract` is the single source of truth for model names, tensor names,
request parameters and limits; the build, the Triton models and the tests
import it from here so that the client can install on its own.
"""
