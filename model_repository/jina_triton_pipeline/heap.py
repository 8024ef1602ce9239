"""Handing freed heap memory back to the system, in every Python-backend stub.

glibc keeps what a process frees for its own reuse: the tokenizer's parse of tokenizer.json
(~90 MB), an engine's first pass and every pass's activations stay resident in each stub for
good, freed but never returned. `malloc_trim(0)` returns every whole free page (measured on the
full model: preprocess 155 -> 63 MB after loading the tokenizer; an encoder stub 227 -> 107 MB;
~20 ms for 100 MB, ~5 ms after a 400-token pass). Not after every call: in a stub, trimming after
each short query cost it ~7 ms (66-69 ms against 59-61, two rounds each), for nothing (a short
pass reuses the heap it finds). Encoders trim after an execute of RELEASE_AFTER_TOKENS or more.
"""
from __future__ import annotations

import ctypes


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the process runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator decides alone
        return None


_TRIM = _malloc_trim()
RELEASE_AFTER_TOKENS = 512  # computed tokens of one execute: ~1 s here, for a few ms of trimming


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
