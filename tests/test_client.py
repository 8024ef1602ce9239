"""The Python client against the real server (tiny replica)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import free_port, sample_texts
from expected import Expected, assert_outputs_match
from jina_triton_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError, InvalidArgument, Limits, RetryPolicy
from jina_triton_client.contract import OUTPUTS, TASKS

pytestmark = pytest.mark.server
LONG = " ".join(f"word{i}" for i in range(120))


@pytest.fixture(scope="module")
def client(triton):
    with EmbeddingClient(triton.grpc_url) as client:
        yield client


@pytest.fixture(scope="module")
def expected(reference, tiny_repository):
    from conftest import TEST_MAX_LENGTH
    return Expected(reference, tiny_repository, TEST_MAX_LENGTH)


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = sample_texts() + [LONG]
    words = " ".join(pool).split()
    return [" ".join(rng.sample(words, rng.randint(1, 60))) for _ in range(count)]


@pytest.mark.parametrize("task", TASKS)
def test_every_option_matches_the_reference(client, expected, task):
    texts = sample_texts()[:3] + [LONG]
    for output in OUTPUTS:
        for input_type in ("query", "document"):
            for dims, truncate in ((32, "END"), (256, "START"), (768, "END")):
                options = {"task": task, "input_type": input_type, "dimensions": dims, "truncate": truncate}
                got = {OUTPUTS[output]: client.embed(texts, output=output, **options),
                       OUTPUTS["float"]: client.embed(texts, output="float", **options)}  # what the rest derive from
                want = expected.floats(texts, task, input_type, dims, truncate)
                assert_outputs_match(got, want, expected.tables, expected.raw(texts, task, input_type, dims, truncate))


def test_token_counts_on_request(client, expected):
    texts = ["short", LONG]
    vectors, counts = client.embed(texts, task="clustering", truncate="START", return_token_counts=True)
    assert vectors.shape == (2, 768)
    np.testing.assert_array_equal(counts, expected.token_counts(texts, "document", "START"))


def test_thousand_texts_in_order_equal_one_by_one(triton):
    texts = mixed_texts(1000)
    with EmbeddingClient(triton.grpc_url, max_in_flight=4) as client:
        together = client.embed(texts, task="retrieval", dimensions=128)

    def single(text):
        with EmbeddingClient(triton.grpc_url) as one:
            return one.embed([text], task="retrieval", dimensions=128)[0]

    with ThreadPoolExecutor(8) as pool:
        alone = np.stack(list(pool.map(single, texts)))
    assert together.shape == (1000, 128)
    assert np.sum(together * alone, axis=1).min() >= 0.99999


def test_async_client_gives_identical_results(client, triton):
    texts = mixed_texts(150, seed=1)

    async def run():
        async with AsyncEmbeddingClient(triton.grpc_url, max_in_flight=3, limits=Limits(max_texts=16)) as aclient:
            assert await aclient.ready()
            floats = await aclient.embed(texts, task="text-matching", input_type="query", dimensions=64)
            packed = await aclient.embed(texts, task="text-matching", output="ubinary", dimensions=64)
            return floats, packed

    floats, packed = asyncio.run(run())
    np.testing.assert_allclose(floats, client.embed(texts, task="text-matching", input_type="query",
                                                    dimensions=64), atol=1e-6)
    np.testing.assert_array_equal(packed, client.embed(texts, task="text-matching", output="ubinary",
                                                       dimensions=64))


@pytest.mark.parametrize("kwargs, field", [
    ({"dimensions": 36, "output": "binary"}, "dimensions: must be divisible by 8"),
    ({"dimensions": 16}, "dimensions: must be from 32 to 768, got 16"),
    ({"dimensions": "64"}, "dimensions: must be an integer"),
    ({"task": "rerank"}, "task: must be one of"),
    ({"output": "float16"}, "output: must be one of"),
    ({"input_type": "passage"}, "input_type: must be one of"),
    ({"truncate": "MIDDLE"}, "truncate: must be one of"),
])
def test_argument_errors_are_caught_before_any_request(kwargs, field):
    from fake_grpc_triton import FakeTriton

    with FakeTriton(refuse_inference=True) as fake, EmbeddingClient(fake.grpc_url) as client:
        with pytest.raises(InvalidArgument, match=field):
            client.embed(["a text"], **{"task": "retrieval", **kwargs})
    assert fake.recorder.calls == []  # nothing was sent


@pytest.mark.parametrize("texts, message", [
    ("just a string", "text: must be a list of strings"),
    (["ok", ""], r"text\[1\]: is empty"),
    (["ok", 3], r"text\[1\]: must be a UTF-8 string"),
    (["\ud800"], r"text\[0\]: is not valid UTF-8"),
])
def test_text_errors_are_caught_before_any_request(texts, message):
    with pytest.raises(InvalidArgument, match=message):
        EmbeddingClient(f"127.0.0.1:{free_port()}").embed(texts, task="retrieval")


@pytest.mark.parametrize("parameters", [{"dimensions": 3}, {"input_type": "passage"}, {"truncate": "MIDDLE"}])
def test_client_and_server_say_the_same(triton, parameters):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    key, value = next(iter(parameters.items()))
    with pytest.raises(InvalidArgument) as client_error:
        EmbeddingClient(triton.grpc_url).embed(["x"], task="retrieval", **parameters)
    data = np.array([[b"x"]], dtype=np.object_)
    tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException) as server_error:
        grpcclient.InferenceServerClient(triton.grpc_url).infer("embed_retrieval", [tensor], parameters=parameters)
    assert server_error.value.message().endswith(str(client_error.value))


def test_server_errors_name_the_callers_index(triton):
    texts = ["a", "b", "c", LONG]
    with pytest.raises(EmbeddingError, match=r"INVALID_ARGUMENT: .*text\[3\]: has more than 64 tokens") as error:
        EmbeddingClient(triton.grpc_url, limits=Limits(max_texts=4)).embed(texts, task="retrieval", truncate="NONE")
    assert error.value.status == "INVALID_ARGUMENT"


def test_readiness_and_unreachable_endpoint(triton):
    assert EmbeddingClient(triton.grpc_url).ready()
    dead = EmbeddingClient(f"127.0.0.1:{free_port()}", retry=None, timeout=2)
    assert not dead.ready()
    dead.retry.retries = 1
    dead.retry.backoff = 0.01
    with pytest.raises(EmbeddingError, match="UNAVAILABLE"):
        dead.embed(["x"], task="retrieval")


def test_headers_are_sent(triton):
    """The client's own headers and a call's reach the server (recorded by a stand-in for Triton),
    and the real server takes a call that carries them."""
    from fake_grpc_triton import FakeTriton

    with FakeTriton(refuse_inference=True) as fake:
        with EmbeddingClient(fake.grpc_url, headers={"X-Api-Key": "anything"}) as client:
            with pytest.raises(EmbeddingError, match="refused by the stand-in"):
                client.embed_detailed(["x"], task="retrieval", headers={"x-request-id": "rid-7"})
    assert fake.recorder.metadata[0]["x-api-key"] == "anything" and fake.recorder.metadata[0]["x-request-id"] == "rid-7"
    with EmbeddingClient(triton.grpc_url, headers={"x-api-key": "anything"}) as client:
        assert client.embed(["x"], task="retrieval").shape == (1, 768)


def test_failover_loses_no_text(triton, tiny_repository, tmp_path):
    """Two servers; one is killed mid-run; every text is answered (or the call raises)."""
    from jina_triton_serving.triton_process import TritonServer

    second = TritonServer.on_free_ports(tiny_repository, log_file=tmp_path / "second.log")
    texts = mixed_texts(600, seed=2)
    with EmbeddingClient(triton.grpc_url) as reference_client:
        want = reference_client.embed(texts, task="classification", dimensions=64)
    with second:
        client = EmbeddingClient([second.grpc_url, triton.grpc_url], limits=Limits(max_texts=8), max_in_flight=2)
        returned = threading.Event()
        killed_mid_run = []

        def kill_once_it_served_some():  # an event, not a timer: the second server has answered 5 requests
            while _answered(second, "embed_classification") < 5 and not returned.is_set():
                time.sleep(0.05)
            killed_mid_run.append(not returned.is_set())
            os.killpg(second.process.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_it_served_some)
        killer.start()
        got = client.embed(texts, task="classification", dimensions=64)
        returned.set()
        killer.join()
    assert second.process.poll() is not None and killed_mid_run == [True], "the second server was not killed mid-run"
    assert np.sum(got * want, axis=1).min() >= 0.99999


def _answered(server, model: str) -> int:
    import tritonclient.grpc as grpcclient

    try:
        stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
            model, headers=server.security.grpc_admin_headers(), as_json=True)["model_stats"][0]
    except Exception:  # noqa: BLE001 - not up yet, or gone
        return 0
    return int(stats["inference_stats"]["success"].get("count", 0))


def _cli(args, stdin=None):
    return subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "embed", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_lines_from_arguments_and_stdin(triton, client, tmp_path):
    result = _cli(["--url", triton.grpc_url, "--input-type", "query", "--dimensions", "64", "hello", "world"])
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1] and len(lines[0]["embedding"]) == 64
    want = client.embed(["hello", "world"], task="retrieval", input_type="query", dimensions=64)
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines]), want, atol=1e-6)

    piped = _cli(["--url", triton.grpc_url, "--output", "ubinary", "--dimensions", "64"], stdin="one\ntwo\nthree\n")
    lines = [json.loads(line) for line in piped.stdout.splitlines()]
    assert len(lines) == 3 and len(base64.b64decode(lines[2]["embedding"])) == 8

    npy = tmp_path / "out.npy"
    assert _cli(["--url", triton.grpc_url, "--npy", str(npy), "a", "b"]).returncode == 0
    assert np.load(npy).shape == (2, 768)


def test_cli_bad_arguments_fail_before_sending():
    result = _cli(["--url", f"127.0.0.1:{free_port()}", "--output", "binary", "--dimensions", "36", "x"])
    assert result.returncode == 2 and "dimensions: must be divisible by 8" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dead_python_stub_is_reloaded_and_the_client_rides_it_out(triton):
    """Triton 2.51 never restarts a dead stub; the supervisor reloads the model, the client retries.

    Requests land on the dead stub too: then Triton never finishes unloading the broken
    instance unless the supervisor stops its idle survivor, which this checks.
    """
    key = ("encoder_clustering", "1")
    before = triton.stub_pids()[key]
    assert len(before) == 2
    os.kill(min(before), signal.SIGKILL)
    patient = RetryPolicy(retries=12, backoff=0.5, max_backoff=3.0)
    with EmbeddingClient(triton.grpc_url, retry=patient) as client, ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda i: client.embed([f"after the crash {i}"], task="clustering").shape, range(8)))
    assert shapes == [(1, 768)] * 8
    deadline = time.monotonic() + 120
    while (triton.stub_pids().get(key, set()) & before or len(triton.stub_pids().get(key, ())) != 2) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    after = triton.stub_pids()[key]
    assert len(after) == 2 and not after & before, "stubs of the broken instance linger"
