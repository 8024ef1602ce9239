"""`jina-triton serve` as users run it: ready message, a working example, clean shutdown."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port

pytestmark = pytest.mark.server


def test_serve_prints_a_working_example_and_stops_on_sigterm(tiny_repository):
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [sys.executable, "-m", "jina_triton_serving.cli", "serve", "--repository", str(tiny_repository),
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, example = [], None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and example is None:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "INFO try: " in line:
                example = line.split("INFO try: ", 1)[1].strip()
        assert example, "".join(lines[-30:])
        assert any("SERVING A SYNTHETIC" in line for line in lines)
        url = re.search(r"(http://\S+/infer)", example).group(1)
        body = re.search(r"-d '(.*)'$", example).group(1)
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
        assert answer["outputs"][0]["name"] == "embeddings" and answer["outputs"][0]["shape"] == [1, 256]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    leftover = subprocess.run(["pgrep", "-f", f"--grpc-port={ports[1]}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "tritonserver outlived serve"
