"""model.py files with a fake triton_python_backend_utils: per-request errors, no leaks."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from jina_triton_pipeline.heap import IdleRelease

from fake_triton import FINAL, Logger, Request, SentRequest, load_model, texts

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

    monkeypatch.setattr(preprocess.step, "tokenizer", explode)
    Logger.lines.clear()
    response, forwarded = preprocess.execute([Request({"text": texts("boom")}, request_id="req-42"),
                                              Request({"text": texts("boom")}, {"x-request-id": "from-gateway-7"})])
    message = response.error.message()
    assert response.error.code() == "INTERNAL" and "secret" not in message and "/" not in message
    incident = re.fullmatch(r"internal error, id ([0-9a-f]{12}) \(see the server log\)", message).group(1)
    assert any(incident in line and "secret detail" in line and "Traceback" in line and "req-42" in line
               for line in Logger.lines)
    assert forwarded.error.code() == "INTERNAL"  # the header the gateway forwards names it in the log
    assert any("from-gateway-7" in line for line in Logger.lines)


def _ids(*rows):
    ids = np.array(rows, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": (ids >= 0).astype(np.int64)}


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def encoder(request, tiny_repository, cuda_repository):
    return load_model({"cpu": tiny_repository, "cuda": cuda_repository}[request.param] / "encoder_retrieval")


def test_an_encoder_checks_each_request_and_answers_the_rest(encoder):
    good = Request(_ids([5, 6, 128001]))
    cases = {
        "input_ids: must hold token ids from 0 to 128255": Request(_ids([5, 10**7, 128001])),
        "input_ids: must hold token ids": Request(_ids([-3, 6, 128001])),
        "attention_mask: must be right-padded": Request({"input_ids": np.array([[5, 6, 7]]),
                                                         "attention_mask": np.array([[0, 1, 1]])}),
        "attention_mask: must hold only 0 and 1": Request({"input_ids": np.array([[5, 6]]),
                                                           "attention_mask": np.array([[1, 2]])}),
        "attention_mask: must have the shape": Request({"input_ids": np.array([[5, 6]]),
                                                        "attention_mask": np.array([[1, 1, 0]])}),
        "input_ids: has 65 positions, more than the maximum 64": Request(_ids([5] * 65)),
        "input_ids: is required": Request({"attention_mask": np.array([[1]])}),
        "input_ids: must be an integer tensor": Request({"input_ids": np.array([[0.5]]),
                                                         "attention_mask": np.array([[1]])}),
    }
    responses = encoder.execute([good, *cases.values(), good])
    assert responses[0].error is None and responses[-1].error is None
    assert responses[0].outputs["pooled_state"].shape == (1, 768) and responses[0].outputs["encode_us"].shape == (1, 1)
    np.testing.assert_allclose(responses[0].outputs["pooled_state"], responses[-1].outputs["pooled_state"], atol=1e-4)
    for response, field in zip(responses[1:-1], cases):
        assert_clean_invalid(response, field)


def test_a_cancelled_request_costs_no_compute(encoder, monkeypatch):
    engine = encoder.step.engine
    passes = []
    forward = engine.forward
    monkeypatch.setattr(engine, "forward", lambda ids, mask: passes.append(tuple(ids.shape)) or forward(ids, mask))
    responses = encoder.execute([Request(_ids([5, 6, 128001]), cancelled=True), Request(_ids([7, 128001]))])
    assert responses[0].error.code() == "UNAVAILABLE" and "cancelled" in responses[0].error.message()
    assert responses[1].error is None
    assert passes == [(1, 2)]  # one pass, with the live request's one row of two tokens only


def test_whether_a_request_is_still_wanted_costs_triton_one_question_per_request_per_interval():
    """is_cancelled is a round trip to the server: asked before each pass of each request it took ~170 of
    them per execute; now once per request at the start, then at most every `every_s`."""
    from jina_triton_pipeline.encoder_step import Wanted

    class Counted(Request):
        asked = 0

        def is_cancelled(self):
            Counted.asked += 1
            return self._cancelled

    requests = [Counted({}), Counted({}, cancelled=True)]
    wanted = Wanted(requests, every_s=60)
    assert [wanted(i) for _ in range(50) for i in (0, 1)] == [True, False] * 50
    assert Counted.asked == 2
    requests[0]._cancelled, Counted.asked = True, 0
    wanted.every_s = 0  # the interval passed: asked again, and a cancelled request is never asked again
    assert [wanted(i) for _ in range(3) for i in (0, 1)] == [False, False] * 3 and Counted.asked == 1


def test_an_encoder_returns_its_heap_once_idle_after_a_big_execute(encoder, monkeypatch):
    """Not inside the execute (the next pass would fault the pages back in): after it, once idle."""
    released = threading.Event()
    monkeypatch.setattr(encoder.step, "heap", IdleRelease(idle_s=0.05, release=released.set))
    encoder.execute([Request(_ids([7, 128001]))])  # 2 tokens: nothing worth returning
    assert not released.wait(0.5)
    forward = encoder.step.engine.forward
    monkeypatch.setattr(encoder.step.engine, "forward",
                        lambda ids, mask: (released.is_set() and pytest.fail("released during an execute"))
                        or forward(ids, mask))
    responses = encoder.execute([Request(_ids([5] * 63 + [128001])) for _ in range(9)])  # 576 tokens
    assert all(response.error is None for response in responses)
    assert released.wait(10)


def test_each_request_is_answered_when_its_rows_are_done(tiny_repository, monkeypatch):
    """Through response senders, a short request batched with a long one is answered before the long
    one's pass runs; each request gets one final response; a bad one is answered at once."""
    encoder = load_model(tiny_repository / "encoder_retrieval")
    log, passes = [], []
    forward = encoder.step.engine.forward
    monkeypatch.setattr(encoder.step.engine, "forward",
                        lambda ids, mask: passes.append((ids.shape, len(log))) or forward(ids, mask))
    long, bad, short = (SentRequest(_ids([5] * 40 + [128001]), log), SentRequest(_ids([-1, 128001]), log),
                        SentRequest(_ids([7, 128001]), log))
    assert encoder.execute([long, bad, short]) is None  # every answer went through its sender
    assert log == [bad, short, long] and passes == [((1, 2), 1), ((1, 41), 2)]
    for request in (long, bad, short):
        assert len(request.sent) == 1 and request.sent[0][1] == FINAL
    assert short.sent[0][0].outputs["pooled_state"].shape == (1, 768) and bad.sent[0][0].error.code() == "INVALID_ARG"
    np.testing.assert_allclose(short.sent[0][0].outputs["pooled_state"],
                               encoder.execute([Request(_ids([7, 128001]))])[0].outputs["pooled_state"], atol=1e-5)


def test_a_cpu_encoder_pass_beside_another_runs_on_one_thread_with_the_same_states(tiny_repository, monkeypatch):
    """A pass that starts while another encoder process runs one takes the 1-thread session (core_share.py):
    the same states; alone it takes the wide one."""
    import os
    import sys

    from jina_triton_pipeline.core_share import PassRegistry

    encoder = load_model(tiny_repository / "encoder_retrieval")
    engine = encoder.step.engine
    assert set(engine.bindings) == {"wide", "narrow"} and engine.registry.folder is not None
    request = _ids([5, 6, 7, 128001], [9, 10, 11, 128001])  # one pass of two rows
    counted = []
    monkeypatch.setattr(encoder.step.metrics, "passes", counted.append)  # what the metric is told per execute
    alone = encoder.execute([Request(request)])[0].outputs["pooled_state"]
    other = PassRegistry(engine.registry.folder, f"{os.getpid()}-other-stub")
    monkeypatch.setattr(sys.modules[type(engine.registry).__module__], "RELIST_S", 0.0)  # it sees the new one now
    try:
        with other.running():
            beside = encoder.execute([Request(request)])[0].outputs["pooled_state"]
    finally:
        other.close()
    assert [{width: count for width, (count, _) in taken.items()} for taken in counted] == [
        {"wide": 1, "narrow": 0}, {"wide": 0, "narrow": 1}]
    assert counted[0]["wide"][1] > 0 and counted[1]["narrow"][1] > 0  # the seconds in those passes
    np.testing.assert_allclose(beside, alone, rtol=1e-5, atol=1e-6)
    engine.registry.close()


@pytest.fixture(scope="module")
def postprocess(tiny_repository):
    return load_model(tiny_repository / "postprocess")


def _pooled(value=1.0, rows=1, width=768, count=3):
    return {"pooled_state": np.full((rows, width), value, np.float32), "token_count": np.full((rows, 1), count, np.int32)}


def test_postprocess_checks_parameters_and_states(postprocess):
    good = Request(_pooled(), {"dimensions": 64})
    nan = _pooled()
    nan["pooled_state"][0, 5] = np.nan
    cases = {
        "truncate: must be one of": Request(_pooled(), {"truncate": 1}),
        "pooled_state: row 0 holds NaN or Inf": Request(nan),
        "pooled_state: row 0 is all zeros": Request(_pooled(0.0)),
        "pooled_state: must be FP32 [n, 768]": Request(_pooled(width=64)),
        "token_count: must be from 1 to 64": Request(_pooled(count=0)),
        "token_count: must be an integer tensor [2, 1]": Request({**_pooled(rows=2), "token_count": np.array([[3]])}),
        "pooled_state: is required": Request({"token_count": np.array([[3]], np.int32)}),
    }
    responses = postprocess.execute([good, *cases.values()])
    assert responses[0].outputs["embeddings"].shape == (1, 64) and responses[0].outputs["embeddings_binary"].shape == (1, 8)
    assert responses[0].outputs["timings_us"].shape == (1, 3)
    for response, field in zip(responses[1:], cases):
        assert_clean_invalid(response, field)
