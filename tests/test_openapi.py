"""The gateway describes itself: /openapi.json is built from the definitions parse() enforces (a
body the schema takes, parse() takes, and the other way round, for every field's edges), it
validates as OpenAPI 3.1, every documented example is answered 200 with a body of the documented
shape, and /docs (assets from the gateway, no CDN) works in a real headless Chromium."""
from __future__ import annotations

import json
import subprocess
import time

import httpx
import jsonschema
import pytest

from conftest import keyed_gateway, system_tool
from jina_triton_client.contract import MAX_DIMENSIONS, MIN_DIMENSIONS, MODEL_NAME, TASKS
from jina_triton_serving.gateway import api, openapi

KEY = "docs-key-7d21"
MAX_INPUTS = 16


@pytest.fixture(scope="module")
def spec() -> dict:
    return openapi.document(MAX_INPUTS, TASKS, "test")


def test_the_document_is_valid_openapi_3_1(spec):
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"] == "3.1.0" and "/v1/embeddings" in spec["paths"]


def _parsed(body, served=TASKS) -> int:
    """parse()'s verdict: 200, or the status of its ApiError."""
    try:
        api.parse(body, MAX_INPUTS, served)
        return 200
    except api.ApiError as error:
        return error.status


def _bodies():
    """Each field at and past its edges, alone on a minimal body (the cross-field rules, e.g. binary
    dimensions divisible by 8, are parse()'s alone and stay out)."""
    yield {"input": "a"}
    yield {"input": ["a", {"text": "b"}]}
    for bad in ("", [], [""], [1, 2], [[1]], [{"text": "a", "x": 1}], 5, None):
        yield {"input": bad}
    yield {"input": ["a"] * MAX_INPUTS}
    yield {"input": ["a"] * (MAX_INPUTS + 1)}
    yield {}
    yield {"input": "a", "unknown": 1}
    for name, field in api.REQUEST.items():
        if "enum" in field.schema:
            for value in field.schema["enum"]:
                yield {"input": "a", name: value}
            yield {"input": "a", name: "not-a-" + name}
            yield {"input": "a", name: 7}
    for dims in (MIN_DIMENSIONS - 1, MIN_DIMENSIONS, 256, MAX_DIMENSIONS, MAX_DIMENSIONS + 1, 64.0, 64.5, "64", True):
        yield {"input": "a", "dimensions": dims}
    for value in (True, False, "END", "START", "NONE", "end", "Start", "MIDDLE", "", 1):
        yield {"input": "a", "truncate": value}
    for name in api.REQUEST:
        yield {"input": "a", name: None}
    for value in (True, False, "yes", 1):
        yield {"input": "a", "normalized": value}
    for value in ("someone", 5):
        yield {"input": "a", "user": value}


@pytest.mark.parametrize("served", [TASKS, ("clustering",)])
def test_the_schema_takes_what_parse_takes(served):
    """On a server of every task and on one of some: valid for the schema exactly when parse() does not
    answer 400. A 404 (a task this server does not serve) the schema cannot always tell: a body with no
    model and no task asks for the default task, retrieval.passage."""
    schema = openapi.document(MAX_INPUTS, served, "test")["components"]["schemas"]["EmbeddingsRequest"]
    checker = jsonschema.Draft202012Validator(schema)
    base = {} if served == TASKS else {"model": f"{MODEL_NAME}-{served[0]}"}  # else every body asks for retrieval
    bodies = [{**base, **body} for body in _bodies()]
    verdicts = [(body, checker.is_valid(body), _parsed(body, served)) for body in bodies]
    disagreements = [(body, valid, status) for body, valid, status in verdicts
                     if status != 404 and valid != (status == 200)]
    assert not disagreements, disagreements
    assert sum(status == 200 for _, _, status in verdicts) > 10 and sum(status == 400 for _, _, status in verdicts) > 20


def test_the_document_lists_only_the_served_tasks_and_this_servers_limit():
    document = openapi.document(8, ("clustering",), "test")
    served = document["components"]["schemas"]["EmbeddingsRequest"]
    assert served["properties"]["model"]["enum"] == [MODEL_NAME, f"{MODEL_NAME}-clustering"]
    assert set(served["properties"]["task"]["anyOf"][0]["enum"]) == {"clustering", "separation"}
    assert served["properties"]["input"]["oneOf"][1]["maxItems"] == 8
    shown = document["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert shown and all(_parsed(example["value"], ("clustering",)) == 200 for example in shown.values())
    assert api.REQUEST["input"].schema["oneOf"][1].get("maxItems") is None  # the definitions stay as they are


def test_every_example_is_a_request_parse_takes(spec):
    examples = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for name, example in examples.items():
        api.parse(example["value"], MAX_INPUTS)


# -- against the real server ------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    yield from keyed_gateway(triton, tmp_path_factory, KEY, "docs-gateway")


def test_each_documented_example_is_answered_as_documented(gateway):
    served = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()
    schemas = served["components"]["schemas"]
    operation = served["paths"]["/v1/embeddings"]["post"]
    for name, example in operation["requestBody"]["content"]["application/json"]["examples"].items():
        reply = httpx.post(f"{gateway.url}/v1/embeddings", json=example["value"], timeout=60,
                           headers={"authorization": f"Bearer {KEY}"})
        assert reply.status_code == 200, (name, reply.text)
        jsonschema.validate(reply.json(), schemas["EmbeddingsResponse"])
    refused = httpx.post(f"{gateway.url}/v1/embeddings", json={"input": "a", "dimensions": 3}, timeout=30,
                         headers={"authorization": f"Bearer {KEY}"})
    assert refused.status_code == 400 and "400" in operation["responses"]
    jsonschema.validate(refused.json(), schemas["Error"])
    models = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    jsonschema.validate(models.json(), schemas["ModelList"])


def test_the_docs_assets_come_from_the_gateway(gateway):
    page = httpx.get(f"{gateway.url}/docs", timeout=30)
    assert page.status_code == 200 and page.headers["content-security-policy"] == "default-src 'self'"
    for asset in openapi.DOC_ASSETS:
        assert httpx.get(f"{gateway.url}/docs/{asset}", timeout=30).status_code == 200, asset
    assert "http" not in page.text.replace('href="/openapi.json"', "")  # nothing from elsewhere
    assert httpx.get(f"{gateway.url}/docs/..%2Fapp.py", timeout=30).status_code == 404
    assert httpx.get(f"{gateway.url}/docs/secret.txt", timeout=30).status_code == 404


class Page:
    """One tab of a headless Chromium, driven over the DevTools protocol."""

    def __init__(self, socket):
        self.socket, self.next_id = socket, 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The expression's value; None while the page is between documents."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.loaded === 'true'")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never had {expression}")


@pytest.fixture
def browser(tmp_path):
    binary = system_tool("chromium")
    if binary is None:
        pytest.skip("no Chromium: apt-get install chromium (Debian), or run as root where apt-get can")
    import websocket

    from conftest import free_port

    port = free_port()
    process = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                f"--remote-debugging-port={port}", f"--user-data-dir={tmp_path / 'profile'}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, target = time.monotonic() + 60, None
        while target is None and time.monotonic() < deadline:
            try:
                pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                target = next((page for page in pages if page["type"] == "page"), None)
            except httpx.HTTPError:
                time.sleep(0.3)
        assert target, "Chromium did not start"
        socket = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60,
                                             suppress_origin=True)
        yield Page(socket)
        socket.close()
    finally:
        process.terminate()
        process.wait(30)


def test_the_docs_page_works_in_a_real_browser(gateway, browser):
    browser.open(f"{gateway.url}/docs")
    paths = browser.evaluate("[...document.querySelectorAll('#endpoints > li')].map(li => li.dataset.path)")
    assert "/v1/embeddings" in paths and "/v1/models" in paths
    browser.evaluate(f"document.getElementById('key').value = {json.dumps(KEY)}")
    browser.evaluate("document.querySelector('li[data-path=\"/v1/embeddings\"] button.send').click()")
    status = browser.wait_for("document.querySelector('li[data-path=\"/v1/embeddings\"] pre.result')"
                              ".dataset.status")
    shown = browser.evaluate("document.querySelector('li[data-path=\"/v1/embeddings\"] pre.result').textContent")
    assert status == "200", shown
    assert '"object":"embedding"' in shown.replace(" ", "")


def test_the_docs_page_says_when_the_key_is_missing(gateway, browser):
    browser.open(f"{gateway.url}/docs")
    browser.evaluate("document.querySelector('li[data-path=\"/v1/embeddings\"] button.send').click()")
    assert browser.wait_for("document.querySelector('li[data-path=\"/v1/embeddings\"] pre.result')"
                            ".dataset.status") == "401"

