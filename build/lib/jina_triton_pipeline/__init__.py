"""Plain functions behind the Triton models: tokenize, pool, quantize.

Each `model.py` in the model repository only adapts Triton requests to these;
they are tested without a server.
"""
