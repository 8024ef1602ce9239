"""The one reading of the server's failures (jina_triton_client.errors.classify), what the client's
retry policy does with each kind, and the gateway's one table of HTTP statuses. Triton 2.51's exact
wording is pinned here: a change in it breaks these tests and errors.py, nothing else."""
from __future__ import annotations

import pytest

from jina_triton_client.errors import EmbeddingError, Failure, classify
from jina_triton_client.retry import Attempts, RetryPolicy, RoundRobin
from test_client_unit import Answer  # a tritonclient exception's stand-in

# (status, Triton's message as a client sees it) -> kind
SEEN = [
    ("INVALID_ARGUMENT", "in ensemble 'embed_retrieval', text[1]: is empty", Failure.INVALID),
    ("INVALID_ARGUMENT", "inference request batch-size must be <= 64 for 'embed_retrieval'", Failure.INVALID),
    ("UNAVAILABLE", "in ensemble 'embed_retrieval', Exceeds maximum queue size", Failure.OVERLOADED),
    ("UNAVAILABLE", "Request timeout expired", Failure.OVERLOADED),
    ("UNAVAILABLE", "in ensemble 'embed_clustering', cancelled: the caller gave up", Failure.OVERLOADED),
    ("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
     Failure.UNAVAILABLE),
    ("CANCELLED", "Server is shutting down", Failure.UNAVAILABLE),
    ("INTERNAL", "in ensemble 'embed_retrieval', Stub process 'encoder_retrieval_0_1' is not healthy.",
     Failure.STUB_CRASHED),
    ("NOT_FOUND", "Request for unknown model: 'encoder_retrieval' has no available versions", Failure.RELOADING),
    ("NOT_FOUND", "Request for unknown model: 'embed_summaries' is not found", Failure.NOT_FOUND),
    ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'", Failure.FORBIDDEN),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", Failure.DEADLINE),
    ("INTERNAL", "internal error, id 0123456789ab (see the server log)", Failure.INTERNAL),
    ("UNKNOWN", "something else", Failure.INTERNAL),
]


@pytest.mark.parametrize("status, message, kind", SEEN)
def test_each_answer_has_one_kind(status, message, kind):
    assert classify(status, message) is kind
    assert EmbeddingError(status, message).failure is kind


@pytest.mark.parametrize("status, message, kind", SEEN)
def test_the_retry_policy_retries_exactly_the_retryable_kinds(status, message, kind):
    attempts = Attempts(RetryPolicy(backoff=0.0), RoundRobin(["a", "b"]), [0], deadline=None)
    attempts.endpoint()
    if kind.retryable:
        assert attempts.failed(Answer(status, message)) == 0.0
    else:
        with pytest.raises(EmbeddingError) as raised:
            attempts.failed(Answer(status, message))
        assert raised.value.failure is kind
    assert {k for k in Failure if k.retryable} == {Failure.OVERLOADED, Failure.UNAVAILABLE, Failure.STUB_CRASHED,
                                                   Failure.RELOADING}


@pytest.mark.parametrize("status, message, kind", SEEN)
def test_the_gateway_answers_each_kind_with_its_status_and_no_internals(status, message, kind):
    from jina_triton_serving.gateway.api import HTTP_STATUS, server_error

    error = server_error(EmbeddingError(status, message), retry_after=1)
    assert error.status == HTTP_STATUS[kind]
    assert "in ensemble" not in error.message and "Stub process" not in error.message
    if error.status == 400:
        assert "text[" not in error.message  # the API's field name
        assert error.param is None or error.message.startswith(error.param + ":")
    if error.status in (429, 503):
        assert error.retry_after == 1
    if error.status == 500 and kind is not Failure.INTERNAL:
        assert error.message == "internal error"


def test_the_table_is_whole_and_says_what_a_caller_can_do():
    from jina_triton_serving.gateway.api import HTTP_STATUS

    assert set(HTTP_STATUS) == set(Failure)
    assert HTTP_STATUS[Failure.INVALID] == 400 and HTTP_STATUS[Failure.OVERLOADED] == 429
    assert {HTTP_STATUS[k] for k in Failure if k.retryable} <= {429, 503}  # retryable: the statuses clients retry
