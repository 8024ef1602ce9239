"""model.py files with a fake triton_python_backend_utils: per-request errors, no leaks."""
from __future__ import annotations

import re

import numpy as np
import pytest

from fake_triton import Logger, Request, load_model, texts

LEAKS = re.compile(r"Traceback|File \"|\.py|/|<class|\b[A-Z]\w*(Error|Exception)\b")


def assert_clean_invalid(response, field):
    assert response.error is not None and response.error.code() == "INVALID_ARG"
    assert response.error.message().startswith(field), response.error.message()
    assert not LEAKS.search(response.error.message()), response.error.message()


@pytest.fixture(scope="module")
def preprocess(tiny_repository):
    return load_model(tiny_repository / "preprocess")


def test_each_request_of_a_batch_is_answered_alone(preprocess):
    requests = [
        Request({"text": texts("good one")}),
        Request({"text": texts(b"\xff\xfe")}),
        Request({"text": texts("fine", "")}),
        Request({"text": texts("ok")}, {"dimensions": 7}),
        Request({}),
        Request({"text": texts("x" * 5000)}),
        Request({"text": np.array([[b"a", b"b"]], dtype=np.object_)}),
        Request({"text": np.array([[1]], dtype=np.int64)}),
        Request({"text": texts("also good", "   ")}, {"input_type": "query", "truncate": "START"}),
    ]
    responses = preprocess.execute(requests)
    assert len(responses) == len(requests)
    assert responses[0].error is None and responses[0].outputs["token_count"].shape == (1, 1)
    assert_clean_invalid(responses[1], "text[0]: is not valid UTF-8")
    assert_clean_invalid(responses[2], "text[1]: is empty")
    assert_clean_invalid(responses[3], "dimensions: must be from 32 to 768, got 7")
    assert_clean_invalid(responses[4], "text: is required")
    assert_clean_invalid(responses[5], "text[0]: has 5000 bytes, more than the limit of 4096")
    assert_clean_invalid(responses[6], "text: must have shape [n, 1]")
    assert_clean_invalid(responses[7], "text: must hold UTF-8 strings")
    assert responses[8].error is None and responses[8].outputs["input_ids"].shape[0] == 2


def test_request_bytes_limit(preprocess):
    response = preprocess.execute([Request({"text": texts(*["y" * 4000] * 17)})])[0]
    assert_clean_invalid(response, "text: the request holds 68000 bytes of text, more than the limit of 65536")


def test_unexpected_failure_is_internal_with_an_id_in_the_log(preprocess, monkeypatch):
    def explode(*args):
        raise RuntimeError("secret detail in /opt/somewhere/model.py")

    monkeypatch.setattr(preprocess, "tokenizer", explode)
    Logger.lines.clear()
    response = preprocess.execute([Request({"text": texts("boom")})])[0]
    message = response.error.message()
    assert response.error.code() == "INTERNAL" and "secret" not in message and "/" not in message
    incident = re.fullmatch(r"internal error, id ([0-9a-f]{12}) \(see the server log\)", message).group(1)
    assert any(incident in line and "secret detail" in line and "Traceback" in line for line in Logger.lines)


def test_encoder_failure_fails_only_the_culprit(tiny_repository):
    encoder = load_model(tiny_repository / "encoder_retrieval")
    good = Request({"input_ids": np.array([[5, 6, 128001]]), "attention_mask": np.array([[1, 1, 1]])})
    bad = Request({"input_ids": np.array([[5, 10**7, 128001]]), "attention_mask": np.array([[1, 1, 1]])})  # id out of range
    responses = encoder.execute([good, bad, good])
    assert responses[0].error is None and responses[2].error is None
    assert responses[0].outputs["last_hidden_state"].shape == (1, 3, 768)
    assert responses[1].error.code() == "INTERNAL"


def test_postprocess_checks_parameters_too(tiny_repository):
    postprocess = load_model(tiny_repository / "postprocess")
    inputs = {"last_hidden_state": np.ones((1, 3, 768), np.float32), "token_count": np.array([[3]], np.int32)}
    good, bad = postprocess.execute([Request(inputs, {"dimensions": 64}), Request(inputs, {"truncate": 1})])
    assert good.outputs["embeddings"].shape == (1, 64) and good.outputs["embeddings_binary"].shape == (1, 8)
    assert_clean_invalid(bad, "truncate: must be one of")
