"""The OpenAI- and Jina-compatible embeddings API in front of the Triton ensembles."""
