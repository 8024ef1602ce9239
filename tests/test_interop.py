"""Clients people point at an embeddings endpoint, against the real gateway and Triton: LangChain's
OpenAIEmbeddings (how it must be configured, and what its default sends), NVIDIA's aiperf
`--endpoint-type embeddings`. The official openai client is tested in test_gateway.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import keyed_gateway
from jina_triton_client.contract import MODEL_NAME

KEY = "interop-key-91c2"
TEXTS = ["how do I reset my router?", "Unplug the router for ten seconds, then plug it back in."]


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    yield from keyed_gateway(triton, tmp_path_factory, KEY, "interop-gateway")


@pytest.fixture(scope="module")
def openai_vectors(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
    data = client.embeddings.create(model=MODEL_NAME, input=TEXTS).data
    return np.array([item.embedding for item in data])


@pytest.fixture(scope="module")
def tokenizer_folder(tiny_checkpoint_dir, tmp_path_factory) -> Path:
    """The tokenizer files alone (LangChain's non-tiktoken path loads them with AutoTokenizer)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_checkpoint_dir / name).is_file():
            shutil.copy2(tiny_checkpoint_dir / name, folder / name)
    return folder


def _langchain(gateway, **settings):
    langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev extras")
    return langchain_openai.OpenAIEmbeddings(model=MODEL_NAME, base_url=f"{gateway.url}/v1", api_key=KEY,
                                             max_retries=0, **settings)


def test_langchain_without_its_token_check_gets_the_openai_clients_vectors(gateway, openai_vectors):
    embeddings = _langchain(gateway, check_embedding_ctx_length=False)
    np.testing.assert_allclose(np.array(embeddings.embed_documents(TEXTS)), openai_vectors, atol=1e-6)
    np.testing.assert_allclose(np.array(embeddings.embed_query(TEXTS[0])), openai_vectors[0], atol=1e-6)


def test_langchain_with_a_local_tokenizer_sends_text_and_works(gateway, openai_vectors, tokenizer_folder):
    """tiktoken_enabled=False: LangChain chunks with a Hugging Face tokenizer and sends the decoded text."""
    embeddings = _langchain(gateway, tiktoken_enabled=False, tiktoken_model_name=str(tokenizer_folder))
    got = np.array(embeddings.embed_documents(TEXTS))
    assert got.shape == openai_vectors.shape
    assert float(np.min(np.sum(got * openai_vectors, axis=1))) > 0.999


def test_token_arrays_as_langchains_default_sends_them_are_refused_clearly(gateway):
    """LangChain's default tiktoken-encodes and sends token ids (cl100k ids, not this model's): refused
    with a 400 that says what to do, never embedded as if they were ours."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
    for sent in ([[15339, 1917]], [15339, 1917]):
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model=MODEL_NAME, input=sent)
        assert "token arrays are not supported; send the text itself" in str(refused.value)
        assert refused.value.body["param"] == "input"


def test_aiperf_profiles_the_gateway(gateway, tokenizer_folder, tmp_path):
    aiperf = shutil.which("aiperf", path=str(Path(sys.executable).parent))
    if aiperf is None:
        pytest.skip("aiperf is in the dev extras: pip install -e '.[dev]'")
    result = subprocess.run([aiperf, "profile", "--model", MODEL_NAME, "--url", gateway.url,
                             "--endpoint-type", "embeddings", "--api-key", KEY, "--tokenizer", str(tokenizer_folder),
                             "--request-count", "12", "--concurrency", "2", "--output-artifact-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(next(tmp_path.rglob("profile_export_aiperf.json")).read_text())
    assert report["is_complete"] and not report["error_summary"], report["error_summary"]
    assert report["request_count"]["avg"] == 12
