"""Serve what you need: `build --tasks` writes only those tasks' models, `serve --tasks` loads only
those, the gateway lists only those, and a request for another task is refused by name (404 from the
gateway, NOT_FOUND from the client naming what is served). One `jina-triton serve` on a repository
built with two of the four tasks, serving one of them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import openai
import pytest

from conftest import REPO_ROOT, TEST_MAX_LENGTH, build_test_repository, free_port
from expected import Expected, assert_outputs_match
from jina_triton_client import EmbeddingClient, EmbeddingError
from jina_triton_client.contract import MODEL_NAME, TASKS, ensemble_name, task_list
from jina_triton_client.errors import Failure
from jina_triton_pipeline.internals import POSTPROCESS_MODEL, PREPROCESS_MODEL, encoder_name, task_models
from test_cli_serve import _get, _wait
from test_server import TEXTS_LONG, infer

BUILT = ("retrieval", "clustering")
SERVED = ("clustering",)
API_KEY = "subset-key-5e1f"


@pytest.fixture(scope="module")
def subset_repository(tmp_path_factory, tiny_checkpoint, engine_cache, fp32_engines, reference):
    return build_test_repository(tiny_checkpoint, tmp_path_factory.mktemp("repo") / "subset", engine_cache,
                                 reference, tasks=",".join(reversed(BUILT)))


def test_a_subset_build_holds_only_its_tasks(subset_repository, tiny_repository):
    manifest = json.loads((subset_repository / "manifest.json").read_text())
    assert tuple(manifest["tasks"]) == BUILT  # in the contract's order, whatever order they were asked in
    models = sorted(p.name for p in subset_repository.iterdir() if (p / "config.pbtxt").is_file())
    assert models == sorted(task_models(BUILT))
    assert set(manifest["engines"]) == set(BUILT)
    # one calibration per checkpoint: a server of two tasks quantizes exactly as one of all four
    calibration = f"{POSTPROCESS_MODEL}/1/calibration.npz"
    assert (subset_repository / calibration).read_bytes() == (tiny_repository / calibration).read_bytes()


def test_unknown_tasks_are_refused_by_name():
    assert task_list("") == TASKS and task_list("clustering, retrieval") == ("retrieval", "clustering")
    with pytest.raises(ValueError, match="unknown task 'separation'.*retrieval, text-matching"):
        task_list("retrieval,separation")


def test_the_api_refuses_an_unserved_task_naming_the_field():
    from jina_triton_serving.gateway import api

    for body, field in (({"input": ["a"], "task": "retrieval.query"}, "task"),
                        ({"input": ["a"], "model": f"{MODEL_NAME}-text-matching"}, "model")):
        with pytest.raises(api.ApiError) as caught:
            api.parse(body, 10, SERVED)
        assert caught.value.status == 404 and caught.value.param == field
    assert api.parse({"input": ["a"], "task": "clustering"}, 10, SERVED).adapter == "clustering"
    listed = [m["id"] for m in api.models_list(0, ("retrieval",))["data"]]
    assert listed == [MODEL_NAME, f"{MODEL_NAME}-retrieval", f"{MODEL_NAME}-retrieval-query",
                      f"{MODEL_NAME}-retrieval-passage"]


@pytest.fixture(scope="module")
def serving(subset_repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("subset-serve")
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "gateway")}
    log = folder / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository", str(subset_repository),
         "--tasks", ",".join(SERVED), "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
         "--metrics-port", str(ports["metrics"]), "--gateway-port", str(ports["gateway"])],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, env={**os.environ, "JINA_TRITON_API_KEY": API_KEY},
        cwd=REPO_ROOT)
    try:
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        assert _wait(lambda: _get(f"{gateway}/ready")[0] == 200 or process.poll() is not None, 240), \
            log.read_text()[-3000:]
        assert process.poll() is None, log.read_text()[-3000:]
        yield {"grpc": f"127.0.0.1:{ports['grpc']}", "http": f"127.0.0.1:{ports['http']}", "gateway": gateway,
               "log": log}
    finally:
        process.terminate()
        process.wait(60)


def test_triton_loads_only_the_served_tasks_models(serving):
    for model in [PREPROCESS_MODEL, POSTPROCESS_MODEL, encoder_name("clustering"), ensemble_name("clustering")]:
        assert _get(f"http://{serving['http']}/v2/models/{model}/ready")[0] == 200, model
    for model in [encoder_name("retrieval"), ensemble_name("retrieval")]:  # built, not served
        assert _get(f"http://{serving['http']}/v2/models/{model}/ready")[0] != 200, model


def test_the_served_task_matches_the_reference(serving, reference, subset_repository):
    """Every output of the served task through the shared backbone, against the reference."""
    expected = Expected(reference, subset_repository, TEST_MAX_LENGTH)
    triton = SimpleNamespace(grpc_url=serving["grpc"])
    for input_type, dims in (("query", 32), ("document", 256)):
        got = infer(triton, "grpc", "clustering", TEXTS_LONG, input_type=input_type, dimensions=dims)
        assert_outputs_match(got, expected.floats(TEXTS_LONG, "clustering", input_type, dims, "END"),
                             expected.tables, expected.raw(TEXTS_LONG, "clustering", input_type, dims, "END"))


def test_the_client_names_what_is_served(serving):
    with EmbeddingClient(serving["grpc"]) as client:
        with pytest.raises(EmbeddingError) as caught:
            client.embed(["hello"], task="retrieval")
    error = caught.value
    assert error.failure is Failure.NOT_FOUND
    assert "task 'retrieval' is not served by this server; it serves clustering" in str(error)


def test_the_gateway_lists_and_serves_only_the_served_task(serving):
    api = openai.OpenAI(base_url=f"{serving['gateway']}/v1", api_key=API_KEY, max_retries=0)
    listed = [model.id for model in api.models.list()]
    assert listed == [f"{MODEL_NAME}-clustering"]
    assert len(api.embeddings.create(model=f"{MODEL_NAME}-clustering", input=["a"]).data[0].embedding) == 768
    for model, extra in ((f"{MODEL_NAME}-retrieval", {}), (MODEL_NAME, {}),
                         (MODEL_NAME, {"task": "text-matching"})):
        with pytest.raises(openai.NotFoundError) as caught:
            api.embeddings.create(model=model, input=["a"], extra_body=extra)
        assert "is not served here; this server serves clustering" in str(caught.value), model


def test_serving_a_task_the_repository_lacks_is_a_clean_error(subset_repository):
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository",
                             str(subset_repository), "--tasks", "text-matching", "--no-gateway"],
                            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert "holds no 'text-matching' task" in result.stderr and "Traceback" not in result.stderr
