"""Every bad input gets a clean INVALID_ARGUMENT from the real server, alone, and the server stays up."""
from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import TEST_LIMITS
from jina_triton_client.contract import PARAMETERS

pytestmark = pytest.mark.server
LEAKS = re.compile(r"Traceback|File \"|\.py\b|/\w|<class|\b[A-Z]\w*(Error|Exception)\b")
LONG = " ".join(f"w{i}" for i in range(200))


def send(triton, protocol, values, parameters=None, dtype="BYTES", model="embed_retrieval", headers=None):
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(triton.grpc_url if protocol == "grpc" else triton.http_url)
    inputs = []
    if values is not None:
        tensor = module.InferInput("text", list(values.shape), dtype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput("embeddings")]
    return client.infer(model, inputs, outputs=outputs, parameters=parameters, headers=headers)


def batch(*texts) -> np.ndarray:
    return np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=np.object_)


def refused(triton, protocol, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as error:
        send(triton, protocol, *args, **kwargs)
    status = str(error.value.status())
    assert status in ("StatusCode.INVALID_ARGUMENT", "400"), (status, error.value.message())
    message = error.value.message()
    assert not LEAKS.search(message), message
    return message


CASES = [
    ("non-utf8", (batch(b"ok", b"\xc3\x28"),), r"text\[1\]: is not valid UTF-8"),
    ("empty", (batch(""),), r"text\[0\]: is empty"),
    ("too long with NONE", (batch("short", LONG), {"truncate": "NONE"}), r"text\[1\]: has more than 64 tokens, the maximum"),
    ("too many texts", (batch(*["t"] * 65),), r"batch-size must be <= 64"),
    ("oversized text", (batch("x" * 4097),), r"text\[0\]: has 4097 bytes, more than the limit of 4096"),
    ("oversized request", (batch(*["y" * 4000] * 17),), r"text: the request holds 68000 bytes of text, more than the limit of 65536"),
    ("unknown input_type", (batch("a"), {"input_type": "passage"}), r"input_type: must be one of 'query', 'document'"),
    ("unknown truncate", (batch("a"), {"truncate": "MIDDLE"}), r"truncate: must be one of 'END', 'START', 'NONE'"),
    ("dimensions too small", (batch("a"), {"dimensions": 16}), r"dimensions: must be from 32 to 768, got 16"),
    ("dimensions too large", (batch("a"), {"dimensions": 1024}), r"dimensions: must be from 32 to 768, got 1024"),
    ("dimensions not an integer", (batch("a"), {"dimensions": "64"}), r"dimensions: must be an integer"),
    ("dimensions a boolean", (batch("a"), {"dimensions": True}), r"dimensions: must be an integer"),
    ("input_type wrong type", (batch("a"), {"input_type": 5}), r"input_type: must be one of"),
    ("truncate wrong type", (batch("a"), {"truncate": False}), r"truncate: must be one of"),
    ("unknown parameter", (batch("a"), {"dimension": 64}), r"dimension: unknown parameter; allowed: input_type, dimensions, truncate"),
    ("wrong dtype", (np.array([[1]], dtype=np.int64), None, "INT64"), r"input 'text' data-type is 'INT64', but model 'embed_retrieval' expects 'BYTES'"),
    ("wrong shape", (np.array([[b"a", b"b"]], dtype=np.object_),), r"unexpected shape for input 'text'"),
    ("missing text", (None,), r"missing required input\(s\) \['text'\]"),
]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name, args, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_invalid_argument(triton, protocol, name, args, pattern):
    assert re.search(pattern, refused(triton, protocol, *args))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_float_dimensions_over_http_json(triton, protocol):
    if protocol == "http":
        assert "dimensions: must be an integer" in refused(triton, "http", batch("a"), {"dimensions": 64.5})


def test_whitespace_only_text_is_embedded(triton):
    result = send(triton, "grpc", batch("   ", "\n\t"))
    assert result.as_numpy("embeddings").shape == (2, 768)


def test_model_that_is_not_loaded(triton):
    with pytest.raises(InferenceServerException) as error:
        send(triton, "grpc", batch("a"), model="embed_summarization")
    assert str(error.value.status()) == "StatusCode.NOT_FOUND"
    assert "unknown model: 'embed_summarization'" in error.value.message()


def test_a_bad_request_fails_alone_inside_a_dynamic_batch(triton):
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    before = stats.get_inference_statistics("preprocess", as_json=True)["model_stats"][0]
    bad_kinds = [(batch(b"\xff"), None), (batch(""), None), (batch("a"), {"dimensions": 3}),
                 (batch("b", LONG), {"truncate": "NONE"})]
    jobs = []
    for index in range(36):
        if index % 3 == 0:
            jobs.append(("bad", *bad_kinds[(index // 3) % len(bad_kinds)]))
        else:
            jobs.append(("good", batch(f"good text number {index}"), {"dimensions": 64}))

    def run(job):
        kind, values, parameters = job
        try:
            return kind, send(triton, "grpc", values, parameters).as_numpy("embeddings")
        except InferenceServerException as exc:
            return kind, exc

    with ThreadPoolExecutor(max_workers=18) as pool:
        results = list(pool.map(run, jobs))
    alone = {f"good text number {i}": send(triton, "grpc", batch(f"good text number {i}"), {"dimensions": 64})
             .as_numpy("embeddings") for i in range(36) if i % 3}
    for (kind, values, _), (_, result) in zip(jobs, results):
        if kind == "good":
            assert isinstance(result, np.ndarray)
            assert float(np.dot(result[0], alone[values[0, 0].decode()][0])) >= 0.99999
        else:
            assert isinstance(result, InferenceServerException)
            assert str(result.status()) == "StatusCode.INVALID_ARGUMENT"
    after = stats.get_inference_statistics("preprocess", as_json=True)["model_stats"][0]
    requests = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert executions < requests, "preprocess never batched requests together"
    assert triton.ready()


def _random_parameters(rng: random.Random) -> dict:
    names = list(PARAMETERS) + ["dimension", "task", "normalize"]
    values = [rng.randint(-10, 2000), rng.choice(["query", "document", "END", "START", "NONE", "", "Query"]),
              rng.choice([True, False]), str(rng.randint(0, 999)), rng.choice([32, 64, 256, 768])]
    return {rng.choice(names): rng.choice(values) for _ in range(rng.choice([0, 0, 0, 1, 2, 3]))}


def _random_text(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if kind < 0.7:
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x400, 0x4ff), rng.randint(0x4e00, 0x9fff),
                                       rng.randint(0x1f600, 0x1f64f), rng.randint(0, 31)]))
                       for _ in range(rng.randint(0, 300))).encode("utf-8", "surrogatepass")
    return rng.choice([b"", b" ", b"\x00", b"Query: ", b"<|end_of_text|>", b"<|pad|>" * 50,
                       "\u202e\u200b".encode(), b"x" * rng.randint(4000, 4200)])


def test_live_fuzz_leaves_only_results_or_clean_errors(triton):
    rng = random.Random(1234)
    cases = [([_random_text(rng) for _ in range(rng.randint(1, 4))], _random_parameters(rng)) for _ in range(2000)]

    def run(case):
        texts, parameters = case
        values = np.array([[t] for t in texts], dtype=np.object_)
        try:
            result = send(triton, "grpc", values, parameters)
            return ("ok", result.as_numpy("embeddings").shape[0] == len(texts))
        except InferenceServerException as exc:
            return (str(exc.status()), exc.message())

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, cases))
    statuses = {outcome[0] for outcome in outcomes}
    assert statuses <= {"ok", "StatusCode.INVALID_ARGUMENT"}, statuses
    assert all(detail for status, detail in outcomes if status == "ok")
    for status, message in outcomes:
        if status != "ok":
            assert not LEAKS.search(message), message
    assert sum(status == "ok" for status, _ in outcomes) > 200  # the encoder was reached often (270 with this seed)
    assert triton.ready()
    assert send(triton, "grpc", batch("still fine")).as_numpy("embeddings").shape == (1, 768)
