"""Short locust runs against the real server: a sweep over every protocol, a killed stub, a restarted
server, a soak, an overload, and the locustfile as locust users run it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]


def run_loadtest(*args, timeout=300):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "loadtest" / "run.py"), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    folder = result.stdout.strip().splitlines()[-1].removeprefix("results in ") if result.stdout else ""
    return result, folder


def test_short_sweep_over_grpc_http_and_the_gateway(triton, tmp_path):
    from jina_triton_serving.gateway.process import GatewayProcess

    with GatewayProcess(triton, log_file=tmp_path / "gateway.log") as gateway:
        result, folder = run_loadtest(
            "sweep", "--url", triton.grpc_url, "--http-url", f"http://{triton.http_url}", "--gateway-url", gateway.url,
            "--scenario", "mixed_tasks", "--protocol", "all", "--users", "1,4", "--step-seconds", "8",
            "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path.glob("sweep-*/summary.json").__next__()).read_text())
    assert [s["users"] for s in summary["steps"]] == [1, 4]
    for step in summary["steps"]:
        assert step["requests"] > 0 and step["failures"] == 0 and step["lost"] == 0
        assert step["tokens_per_s"] > 0 and step["texts_per_s"] > 0
    out = next(tmp_path.glob("sweep-*"))
    assert (out / "sweep.png").stat().st_size > 1000
    assert (out / "step-004_stats.csv").is_file() and (out / "step-004.html").is_file()
    assert summary["machine"]["cpu"]["cores"] >= 1
    protocols = {json.loads(line).get("protocol") for line in (out / "step-004.events.jsonl").read_text().splitlines()}
    assert {"grpc", "http", "gateway"} <= protocols


@pytest.mark.parametrize("kind, seconds", [("stub", 18), ("restart", 32)])
def test_fault_run_loses_nothing(tiny_repository, tmp_path, kind, seconds):
    result, _ = run_loadtest("fault", "--kind", kind, "--repository", str(tiny_repository),
                             "--scenario", "query_heavy", "--users", "4", "--seconds", str(seconds),
                             "--at", "8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("fault-*/summary.json")).read_text())
    step = summary["steps"][0]
    assert step["lost"] == 0 and step["failures"] == 0 and step["requests"] > 0
    assert summary["failures_after_fault"] == 0
    assert summary["answered_after_fault"] > 0 and summary["recovery_s"] is not None
    if kind == "stub":
        assert summary["stub_pid_killed"]
    else:
        assert summary["server_downtime_s"] > 0


def test_short_soak_samples_memory(tiny_repository, tmp_path):
    result, _ = run_loadtest("soak", "--repository", str(tiny_repository), "--scenario", "binary_small",
                             "--users", "2", "--minutes", "0.3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("soak-*/summary.json")).read_text())
    assert len(summary["memory_samples"]) >= 3 and summary["memory_samples"][0]["rss_mb"] > 100
    assert summary["steps"][0]["lost"] == 0 and summary["steps"][0]["failures"] == 0
    for window in ("after_warmup", "second_half"):
        assert summary[window]["requests"] > 0 and summary[window]["mb_per_1000_requests"] is not None


def test_overload_refuses_fast_and_loses_nothing(tiny_repository, tmp_path):
    result, _ = run_loadtest("overload", "--repository", str(tiny_repository), "--scenario", "query_heavy",
                             "--users", "4", "--step-seconds", "7", "--gateway-concurrency", "2", "--out", str(tmp_path),
                             timeout=400)
    summary = json.loads(next(tmp_path.glob("overload-*/summary.json")).read_text())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [s.get("factor") for s in summary["steps"]] == [None, 2, 4] and summary["alive_after"]
    for step in summary["steps"]:
        assert step["lost"] == 0 and step["failures"] == 0 and step["admitted"] > 0
    saturation = summary["saturation_requests_per_s"]
    overloaded = [step for step in summary["steps"][1:] if step["sent_per_s"] > 1.5 * saturation]
    # the generator shares the 2 cores and may fall short of 4x (a caveat, not a failure), but it
    # must have overloaded the server somewhere, and wherever it did, the excess was refused
    assert overloaded, summary["caveats"]
    for step in overloaded:
        assert step["refused"] > 0, step
    for caveat in summary["caveats"]:
        assert "open-loop generator sent" in caveat


def test_the_locustfile_runs_as_locust_users_run_it(triton, tmp_path):
    """No project-specific environment: `locust -f loadtest/locustfile.py CLASS --host ...`, plus the sweep shape."""
    command = [sys.executable, "-m", "locust", "-f", f"{REPO_ROOT}/loadtest/locustfile.py,{REPO_ROOT}/loadtest/shapes.py",
               "--headless", "--host", f"http://{triton.http_url}", "--sweep-users", "1,2", "--step-seconds", "3",
               "--csv", str(tmp_path / "run"), "--only-summary", "TritonHttpUser"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("JINA_")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {row.split(",")[1]: row.split(",") for row in (tmp_path / "run_stats.csv").read_text().splitlines()[1:]}
    assert int(rows["Aggregated"][2]) > 0 and int(rows["Aggregated"][3]) == 0  # requests, failures
