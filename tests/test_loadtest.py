"""Short locust runs against the real server: a sweep, a killed stub, a restarted server."""
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


def test_short_sweep_over_grpc_and_http(triton, tiny_repository, tmp_path):
    result, folder = run_loadtest(
        "sweep", "--url", triton.grpc_url, "--http-url", f"http://{triton.http_url}",
        "--tokenizer", str(tiny_repository / "preprocess" / "1" / "tokenizer.json"),
        "--scenario", "mixed_tasks", "--protocol", "both", "--users", "1,4", "--step-seconds", "8",
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
    assert summary["machine"]["cores"] >= 1


@pytest.mark.parametrize("kind, seconds", [("stub", 25), ("restart", 40)])
def test_fault_run_loses_nothing(tiny_repository, tmp_path, kind, seconds):
    result, _ = run_loadtest("fault", "--kind", kind, "--repository", str(tiny_repository),
                             "--scenario", "query_heavy", "--users", "4", "--seconds", str(seconds),
                             "--at", "8", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("fault-*/summary.json")).read_text())
    step = summary["steps"][0]
    assert step["lost"] == 0 and step["requests"] > 0
    assert summary["answered_after_fault"] > 0 and summary["recovery_s"] is not None
    if kind == "stub":
        assert summary["stub_pid_killed"]
    else:
        assert summary["server_downtime_s"] > 0


def test_short_soak_samples_memory(tiny_repository, tmp_path):
    result, _ = run_loadtest("soak", "--repository", str(tiny_repository), "--scenario", "binary_small",
                             "--users", "2", "--minutes", "0.4", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(next(tmp_path.glob("soak-*/summary.json")).read_text())
    assert len(summary["memory_samples"]) >= 3 and summary["memory_samples"][0]["rss_mb"] > 100
    assert summary["steps"][0]["lost"] == 0 and summary["steps"][0]["failures"] == 0
    for window in ("after_warmup", "second_half"):
        assert summary[window]["requests"] > 0 and summary[window]["mb_per_1000_requests"] is not None
