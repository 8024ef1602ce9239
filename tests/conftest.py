"""Shared fixtures: one tiny SYNTHETIC checkpoint, its reference encoder and engines."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from jina_triton.serve import free_port  # noqa: F401 - tests import it from here

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    from jina_triton.synth import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=7)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_dir):
    from jina_triton.checkpoint import open_checkpoint

    return open_checkpoint(tiny_checkpoint_dir)


@pytest.fixture(scope="session")
def reference(tiny_checkpoint):
    from jina_triton.reference import ReferenceEncoder

    return ReferenceEncoder(tiny_checkpoint)


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def fp32_engines(tiny_checkpoint, reference, engine_cache):
    from jina_triton.engines import build_engines

    return build_engines(tiny_checkpoint, "fp32", engine_cache, reference=reference)


@pytest.fixture(scope="session")
def int8_engines(tiny_checkpoint, reference, engine_cache, fp32_engines):
    from jina_triton.engines import build_engines

    return build_engines(tiny_checkpoint, "int8", engine_cache, reference=reference)


def sample_texts() -> list[str]:
    """Texts of very different lengths (padded batches), several languages and scripts."""
    from jina_triton.corpus import corpus_entries

    by_lang: dict[str, list[str]] = {}
    for lang, sentence in corpus_entries():
        by_lang.setdefault(lang, []).append(sentence)
    return [
        "hi",
        by_lang["en"][3],
        by_lang["de"][12] + " " + by_lang["de"][13],
        " ".join(by_lang["fr"][:12]),
        by_lang["zh"][15],
        by_lang["ar"][10] + " " + by_lang["ru"][11],
        "  leading and trailing spaces  ",
        "emoji 🚀 and ünïcödé",
    ]


TEST_MAX_LENGTH = 64  # small, so that truncation really happens in the server tests
TEST_LIMITS = {"max_length": TEST_MAX_LENGTH, "max_text_bytes": 4096, "max_request_bytes": 65536,
               "token_budget": 512, "preprocess_queue_delay_us": 5000}


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines):
    from jina_triton.repository import RepositoryOptions, build_repository

    out = tmp_path_factory.mktemp("repo") / "tiny"
    build_repository(tiny_checkpoint, out, RepositoryOptions(**TEST_LIMITS), cache_dir=engine_cache)
    return out


@pytest.fixture(scope="session")
def triton(tiny_repository, tmp_path_factory):
    """The real Triton server on the tiny repository, on free loopback ports."""
    from jina_triton.serve import TritonServer

    log = tmp_path_factory.mktemp("triton") / "server.log"
    server = TritonServer.on_free_ports(tiny_repository, log_file=log)
    with server:
        yield server
