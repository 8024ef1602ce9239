"""The real Triton server on the tiny replica, through gRPC and HTTP, for the `cpu` target
(onnxruntime) and the `cuda` target (PyTorch; on this machine's CPU in fp32)."""
from __future__ import annotations

import itertools
import random
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import TEST_MAX_LENGTH, sample_texts
from expected import Expected, assert_outputs_match
from jina_triton_client.contract import OUTPUTS, TASKS, TEXT, TIMINGS, TOKEN_COUNT, ensemble_name
from jina_triton_pipeline.model_metrics import PASS_SECONDS_METRIC, PASSES_METRIC
from jina_triton_tools.bench import counter_totals, token_totals

pytestmark = pytest.mark.server

ALL_OUTPUTS = list(OUTPUTS.values()) + [TOKEN_COUNT]
LONG = " ".join(f"word{i}" for i in range(120))  # longer than the test max length
TEXTS_FIT = [sample_texts()[i] for i in (0, 1, 4, 6, 7)]  # all within the test max length
TEXTS_LONG = TEXTS_FIT[:3] + [LONG, sample_texts()[3]]


def infer(triton, protocol, task, texts, outputs=ALL_OUTPUTS, **parameters):
    """One request; returns {output name: array}."""
    if protocol == "grpc":
        import tritonclient.grpc as client
        connection = client.InferenceServerClient(triton.grpc_url)
    else:
        import tritonclient.http as client
        connection = client.InferenceServerClient(triton.http_url)
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = client.InferInput(TEXT, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    requested = [client.InferRequestedOutput(name) for name in outputs]
    result = connection.infer(ensemble_name(task), [tensor], outputs=requested, parameters=parameters or None)
    return {name: result.as_numpy(name) for name in outputs}


@pytest.fixture(scope="module")
def expected(reference, tiny_repository):
    return Expected(reference, tiny_repository, TEST_MAX_LENGTH)


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def triton(request):
    """Every test of this module runs on both targets (shadows the session's `cpu` server)."""
    return request.getfixturevalue({"cpu": "triton", "cuda": "triton_cuda"}[request.param])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("task", TASKS)
def test_every_output_matches_the_reference(triton, expected, protocol, task):
    for input_type, dims, truncate in itertools.product(("query", "document"), (32, 64, 256, 768),
                                                        ("END", "START", "NONE")):
        texts = TEXTS_FIT if truncate == "NONE" else TEXTS_LONG
        got = infer(triton, protocol, task, texts, input_type=input_type, dimensions=dims, truncate=truncate)
        want = expected.floats(texts, task, input_type, dims, truncate)
        assert_outputs_match(got, want, expected.tables, expected.raw(texts, task, input_type, dims, truncate))
        np.testing.assert_array_equal(got[TOKEN_COUNT][:, 0], expected.token_counts(texts, input_type, truncate))


def test_defaults_are_document_768_end(triton, expected):
    got = infer(triton, "grpc", "retrieval", TEXTS_LONG)
    want = expected.floats(TEXTS_LONG, "retrieval", "document", 768, "END")
    assert_outputs_match(got, want, expected.tables, expected.raw(TEXTS_LONG, "retrieval", "document", 768, "END"))
    assert got[TOKEN_COUNT].max() == TEST_MAX_LENGTH


def test_token_count_includes_prefix_and_eos(triton, reference):
    got = infer(triton, "grpc", "clustering", ["hello world"], [TOKEN_COUNT], input_type="query")
    ids = reference.tokenizer("Query: hello world")["input_ids"]
    assert got[TOKEN_COUNT].tolist() == [[len(ids)]] and ids[-1] == reference.tokenizer.eos_token_id


def test_batch_equals_one_by_one(triton):
    texts = TEXTS_LONG + ["one more", "and another text, a little longer than the one before"]
    batch = infer(triton, "grpc", "text-matching", texts, dimensions=256)
    for index, text in enumerate(texts):
        single = infer(triton, "grpc", "text-matching", [text], dimensions=256)
        cosine = float(np.dot(batch[OUTPUTS["float"]][index], single[OUTPUTS["float"]][0]))
        assert cosine >= 0.99999
        assert batch[TOKEN_COUNT][index] == single[TOKEN_COUNT][0]
        np.testing.assert_array_equal(batch[OUTPUTS["ubinary"]][index], single[OUTPUTS["ubinary"]][0])


def test_concurrent_requests_get_their_own_answers(triton, expected):
    rng = random.Random(3)
    pool = sample_texts() + [LONG, "x", "a medium length sentence about databases and indexes"]
    jobs = []
    for _ in range(24):
        texts = rng.sample(pool, rng.randint(1, 4))
        jobs.append((rng.choice(TASKS), texts, rng.choice(("query", "document")),
                     rng.choice((32, 64, 128, 256, 768)), rng.choice(("END", "START"))))

    def run(job):
        task, texts, input_type, dims, truncate = job
        return infer(triton, "grpc", task, texts, input_type=input_type, dimensions=dims, truncate=truncate)

    with ThreadPoolExecutor(max_workers=12) as executor:
        results = list(executor.map(run, jobs))
    for (task, texts, input_type, dims, truncate), got in zip(jobs, results):
        assert_outputs_match(got, expected.floats(texts, task, input_type, dims, truncate), expected.tables,
                             expected.raw(texts, task, input_type, dims, truncate))


def test_timings_are_the_requests_own(triton):
    got = infer(triton, "grpc", "retrieval", ["time me", "and me too, a little longer"], [TIMINGS, TOKEN_COUNT])
    timings = got[TIMINGS]
    assert timings.shape == (2, 3) and (timings[0] == timings[1]).all()  # one request: one set of parts
    assert (timings >= 0).all() and timings[0, 1] > 0  # the encoder took some time


def test_metrics_and_statistics(triton, request):
    import tritonclient.grpc as grpcclient

    infer(triton, "grpc", "retrieval", ["metrics please"])
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'nv_inference_request_success{model="embed_retrieval",version="1"}' in metrics
    assert 'nv_inference_queue_duration_us{model="encoder_retrieval",version="1"}' in metrics
    assert 'nv_inference_request_summary_us' in metrics  # latency summaries are on
    values = token_totals(metrics, "encoder_retrieval")
    assert values["real"] >= 1 and values["computed"] >= values["real"]
    passes, seconds = (counter_totals(metrics, metric, "session", "encoder_retrieval")
                       for metric in (PASSES_METRIC, PASS_SECONDS_METRIC))
    if "cpu" in request.node.callspec.id:  # the onnxruntime engine counts its passes by session and their time
        assert sum(passes.values()) >= 1 and sum(seconds.values()) > 0 and set(seconds) == set(passes)
    stats = grpcclient.InferenceServerClient(triton.grpc_url).get_inference_statistics(
        "embed_retrieval", headers=triton.security.grpc_admin_headers(), as_json=True)
    assert int(stats["model_stats"][0]["inference_stats"]["success"]["count"]) >= 1
