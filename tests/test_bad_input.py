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
@pytest.mark.parametrize("value", [64.5, 1e30, -1.0])
def test_float_dimensions(triton, protocol, value):
    assert "dimensions: must be an integer" in refused(triton, protocol, batch("a"), {"dimensions": value})


def test_null_and_huge_parameters(triton):
    # a JSON null is refused by Triton's own parameter parsing, also naming the field
    assert "parameter 'dimensions' has invalid type" in refused(triton, "http", batch("a"), {"dimensions": None})
    assert "parameter 'input_type' has invalid type" in refused(triton, "http", batch("a"), {"input_type": None})
    assert "dimensions: must be" in refused(triton, "http", batch("a"), {"dimensions": 10**30})
    assert "dimensions: must be from 32 to 768" in refused(triton, "grpc", batch("a"), {"dimensions": 2**62})


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_empty_batch_is_refused(triton, protocol):
    with pytest.raises(InferenceServerException) as error:
        send(triton, protocol, np.zeros((0, 1), dtype=np.object_))
    assert not LEAKS.search(error.value.message())
    assert str(error.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), error.value.message()
    assert triton.ready()


def test_whitespace_only_text_is_embedded(triton):
    result = send(triton, "grpc", batch("   ", "\n\t"))
    assert result.as_numpy("embeddings").shape == (2, 768)


def test_model_that_is_not_loaded(triton):
    with pytest.raises(InferenceServerException) as error:
        send(triton, "grpc", batch("a"), model="embed_summarization")
    assert str(error.value.status()) == "StatusCode.NOT_FOUND"
    assert "unknown model: 'embed_summarization'" in error.value.message()


def _mixed_executions(triton) -> float:
    import urllib.request

    with urllib.request.urlopen(triton.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('jina_model_mixed_executions_total{') and 'model="preprocess"' in line)


def test_a_bad_request_fails_alone_inside_a_dynamic_batch(triton):
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    admin = triton.security.grpc_admin_headers()  # statistics are locked like every admin API
    before = stats.get_inference_statistics("preprocess", headers=admin, as_json=True)["model_stats"][0]
    mixed_before = _mixed_executions(triton)
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
    after = stats.get_inference_statistics("preprocess", headers=admin, as_json=True)["model_stats"][0]
    requests = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert executions < requests, "preprocess never batched requests together"
    assert _mixed_executions(triton) > mixed_before, "no execution held a bad request beside good ones"
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
            return ("ok", send(triton, "grpc", values, parameters).as_numpy("embeddings"))
        except InferenceServerException as exc:
            return (str(exc.status()), exc.message())

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(run, cases))
    statuses = {outcome[0] for outcome in outcomes}
    assert statuses <= {"ok", "StatusCode.INVALID_ARGUMENT"}, statuses
    answered = [(case, vectors) for case, (status, vectors) in zip(cases, outcomes) if status == "ok"]
    for (texts, parameters), vectors in answered:  # finite, unit length, the width asked for, a row per text
        width = parameters.get("dimensions", 768)
        assert vectors.shape == (len(texts), width) and np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    for (texts, parameters), vectors in answered[:40]:  # the right request's rows: alone, the same answer
        values = np.array([[t] for t in texts], dtype=np.object_)
        alone = send(triton, "grpc", values, parameters).as_numpy("embeddings")
        assert np.sum(alone * vectors, axis=1).min() >= 0.99999
    for status, message in outcomes:
        if status != "ok":
            assert not LEAKS.search(message), message
    assert len(answered) > 200  # the encoder was reached often
    assert triton.ready()
    assert send(triton, "grpc", batch("still fine")).as_numpy("embeddings").shape == (1, 768)


def _direct(triton, model, inputs: dict, parameters=None):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
                                                                 np.dtype(np.float32): "FP32"}[array.dtype])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors, parameters=parameters)


def _ids(*rows):
    ids = np.array(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


ENCODER_CASES = [
    ("id out of the vocabulary", _ids([5, 10**7, 128001]), "input_ids: must hold token ids from 0 to 128255"),
    ("negative id", _ids([-5, 128001]), "input_ids: must hold token ids"),
    ("longer than the max length", _ids([5] * 4096), "input_ids: has 4096 positions, more than the maximum 64"),
    ("mask not right-padded", {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.array([[0, 1, 1]])},
     "attention_mask: must be right-padded"),
    ("mask not 0/1", {"input_ids": np.array([[5, 6]]), "attention_mask": np.array([[1, 7]])},
     "attention_mask: must hold only 0 and 1"),
]


@pytest.mark.parametrize("name, inputs, pattern", ENCODER_CASES, ids=[c[0] for c in ENCODER_CASES])
def test_a_direct_call_to_an_encoder_is_checked(any_target, name, inputs, pattern):
    with pytest.raises(InferenceServerException) as error:
        _direct(any_target, "encoder_retrieval", inputs)
    assert str(error.value.status()) == "StatusCode.INVALID_ARGUMENT" and pattern in error.value.message()
    assert not LEAKS.search(error.value.message())
    assert any_target.ready()


def _pooled(value=1.0, count=3):
    return {"pooled_state": np.full((1, 768), value, np.float32), "token_count": np.array([[count]], np.int32)}


def _nan():
    inputs = _pooled()
    inputs["pooled_state"][0, 3] = np.nan
    return inputs


POSTPROCESS_CASES = [
    ("NaN state", _nan(), "pooled_state: row 0 holds NaN or Inf"),
    ("zero state", _pooled(0.0), "pooled_state: row 0 is all zeros"),
    ("token count 0", _pooled(count=0), "token_count: must be from 1 to 64"),
    ("token count over the max", _pooled(count=65), "token_count: must be from 1 to 64"),
]


@pytest.mark.parametrize("name, inputs, pattern", POSTPROCESS_CASES, ids=[c[0] for c in POSTPROCESS_CASES])
def test_a_direct_call_to_postprocess_is_checked(triton, name, inputs, pattern):
    with pytest.raises(InferenceServerException) as error:
        _direct(triton, "postprocess", inputs)
    assert str(error.value.status()) == "StatusCode.INVALID_ARGUMENT" and pattern in error.value.message()


def test_direct_calls_that_are_fine_are_answered(triton):
    assert _direct(triton, "encoder_retrieval", _ids([5, 6, 128001])).as_numpy("pooled_state").shape == (1, 768)
    result = _direct(triton, "postprocess", _pooled(), {"dimensions": 64})
    assert result.as_numpy("embeddings").shape == (1, 64)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(batch("a"))
    assert client.infer("preprocess", [text]).as_numpy("token_count").tolist() == [[4]]
    with pytest.raises(InferenceServerException, match="input_type: must be one of"):
        client.infer("preprocess", [text], parameters={"input_type": "x"})
