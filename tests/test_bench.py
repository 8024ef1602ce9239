"""`jina-triton bench` runs end to end on the tiny replica (speed is judged by `make bench`, not here)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.server


def test_workload_profiles_are_deterministic_and_in_range(tiny_checkpoint_dir):
    from jina_triton_tools.workload import Workload, token_counter

    counter = token_counter(tiny_checkpoint_dir / "tokenizer.json")
    first = Workload(counter, seed=3).texts("mixed", 20)
    assert first == Workload(counter, seed=3).texts("mixed", 20)
    kinds = {t.input_type for t in first}
    assert kinds == {"query", "document"}
    for text in first:
        low, high = (8, 32) if text.input_type == "query" else (100, 512)
        assert text.tokens <= high and (text.tokens >= low or text.input_type == "query")
    assert len({t.text for t in first}) == 20


def test_bench_runs_on_the_tiny_replica(tmp_path, tiny_checkpoint_dir, engine_cache, int8_engines):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "jina_triton_serving.cli", "bench", "--checkpoint",
                             str(tiny_checkpoint_dir), "--out", str(out), "--texts", "8", "--concurrency", "4",
                             "--repeats", "2", "--cache-dir", str(engine_cache)], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(next(out.glob("bench-*.json")).read_text())
    assert set(report["results"]) == {f"{kind}-{precision}" for kind in ("engine", "served", "gateway")
                                      for precision in ("fp32", "int8")} | {"reference-fp32"}
    for name, run in report["results"].items():
        assert run["texts"] == 8 and run["tokens_per_s"] > 0 and run["padded_ratio"] >= 1.0
        assert run["short_query_ms"] > 0 and 0 < run["peak_fraction"] and run["gflops"] > 0
        assert run["runs"] == (1 if name.startswith("reference") else 2) and (run["spread"] is None) == (run["runs"] == 1)
    machine = report["machine"]
    assert machine["cpu"]["model"] and machine["matmul_peak_gflops"] > 1 and "avx2" in machine["cpu"]["flags"]
    assert machine["code"] and f"; code {machine['code']};" in result.stdout  # the commit the run came from
    from jina_triton_tools.bench import PACKINGS, PROCESS_PACKINGS

    for precision in ("fp32", "int8"):  # one process on each packing, two sharing the cores as the instances do
        ways = report["packings"][precision]
        assert len(ways) == len(PACKINGS) + len(PROCESS_PACKINGS) and all(v > 0 for v in ways.values()), ways
        assert sum(label.startswith("2 processes sharing the cores") for label in ways) == len(PROCESS_PACKINGS)
        assert report["results"][f"engine-{precision}"]["note"].split(": ", 1)[1].split(" (")[0].split(";")[0] in ways
    for name in ("fp32", "int8", "fp32 --tasks retrieval"):
        processes = report["memory"][name]["after load"]["by_process_mb"]
        assert processes["tritonserver"] > 0 and processes["encoder_retrieval"] > 0, processes
        assert ("encoder_clustering" in processes) == (name != "fp32 --tasks retrieval")
        if name in ("fp32", "int8"):  # also before the encoders' idle trim, as the load ends
            assert report["memory"][name]["as the served load ends"]["by_process_mb"]["encoder_retrieval"] > 0
    assert all(report["start"][p]["ready_s"] > 0 for p in ("fp32", "int8"))
    for precision in ("fp32", "int8"):  # the short query's time in the encoder stub, and its pass within it
        served = report["results"][f"served-{precision}"]
        assert 0 < served["in_pass_ms"] < served["in_stub_ms"] and "passes on one thread" in served["note"]
        for kind, under in (("served", "engine"), ("gateway", "served")):  # timed in turn with the layer under
            gap = report["ratios"][f"{kind} - {under} short query ms, paired ({precision})"][0]
            assert gap == report["results"][f"{kind}-{precision}"]["gap_ms"] and gap > -5, gap
        pass_over_bare = report["ratios"][f"of that, the pass in the stub - the same pass bare, short query ms ({precision})"][0]
        assert pass_over_bare == round(served["in_pass_ms"] - served["under_ms"], 1)  # the bare one of the same pairs
        for kind in ("served", "gateway"):  # how busy each part kept the cores, the load generator included
            cores = report["results"][f"{kind}-{precision}"]["cores"]
            parts = {"encoders", "preprocess", "postprocess", "tritonserver", "load generator (the bench)"}
            assert parts | ({"gateway"} if kind == "gateway" else set()) == set(cores), cores
            assert cores["encoders"] > 0 and sum(cores.values()) < 2.5  # (the load generator: ticks of 10 ms)
        assert 0 < report["results"][f"engine-{precision}"]["cores"]["engine"] < 2.5  # its processes' CPU, timed
        assert report["ratios"][f"encoder CPU per token, served stubs / engine ({precision})"][0] > 0
    assert "cold start s (empty engine cache -> ready, fp32)" not in report["ratios"]  # a reused cache
    assert {"served/engine tokens/s (fp32)", "gateway/served tokens/s (fp32)"} <= set(report["ratios"])
    assert 0.9 < report["int8_cosine_vs_fp32"]["mean"] <= 1.0
    assert report["vocabularies"]["served"] > 0 and report["vocabularies"]["small_bpe"] > 0
    assert "| served-fp32 |" in result.stdout and "matmul peak" in result.stdout
    for precision in ("fp32", "int8"):  # each run paired with the engine of its repeat, the order rotated
        assert len(report["ratios"][f"served/engine tokens/s, run by run ({precision})"][0].split(", ")) == 2
        interval = report["ratios"][f"served/engine tokens/s, 90 % interval from the runs ({precision})"][0]
        assert interval.split(": ")[1] in {"met", "not met", "undecided at this noise (more repeats narrow it)"}
        log = result.stdout + result.stderr
        first = [log.index(f"{step}, run {run} of 2") for run in (1, 2) for step in
                 (f"(a) bare {precision} engine, the best way", f"(b) served {precision} ensemble")]
        assert first[0] < first[1] and first[3] < first[2], first  # engine first in run 1, served first in run 2


def test_the_served_over_engine_verdict_weighs_the_noise_between_repeats():
    """Met only where the whole 90 % interval of the paired runs clears the target."""
    from jina_triton_tools.bench import ratio_interval, t90, verdict

    assert ratio_interval([0.95]) is None  # one run: no spread to weigh
    low, high = ratio_interval([0.969, 0.986, 0.992])  # the 2026-12-04 17:42 fp32 runs
    assert (low, high) == (0.9623, 1.0027) and verdict((low, high), 0.95) == "met"
    faster_host = ratio_interval([0.906, 0.879, 0.925, 0.952, 0.975])  # 08:49 int8: mean 0.927, wide
    assert faster_host[0] < 0.95 < faster_host[1] and verdict(faster_host, 0.95).startswith("undecided")
    assert verdict(ratio_interval([0.80, 0.82]), 0.95) == "not met"
    assert ratio_interval([0.95, 0.95, 0.95]) == (0.95, 0.95)  # no spread: the interval is the value
    assert verdict((0.95, 0.95), 0.95) == "met"
    # past the table, Student's t stays over the normal's 1.645 (exact values: 1.796, 1.725, 1.697, 1.664)
    assert [round(t90(dof), 3) for dof in (10, 11, 20, 30, 80)] == [1.812, 1.796, 1.725, 1.697, 1.664]


def test_the_readme_shows_one_bench_run_between_its_markers(tmp_path, caplog):
    """`jina-triton bench-readme` puts the newest report between the markers, headings one level down;
    the text around it stays, a second run changes nothing, and a README without markers is refused."""
    from jina_triton_serving.cli import main
    from jina_triton_tools.readme_report import BEGIN, END

    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench-20261204-101010.md").write_text("## Benchmark: older\n\n| a |\n")
    (out / "bench-20261204-204235.md").write_text("## Benchmark: newest\n\n| served/engine | 0.998 |\n### sub\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Throughput\nintro\n{BEGIN}\nstale table\n{END}\nafter\n")
    assert main(["bench-readme", "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\n## Throughput\nintro\n") and text.endswith(f"{END}\nafter\n")
    assert "stale table" not in text and "older" not in text
    assert "### Benchmark: newest" in text and "#### sub" in text and "| served/engine | 0.998 |" in text
    assert "`bench-20261204-204235.md`" in text
    assert main(["bench-readme", "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == text

    readme.write_text("# no markers\n")
    assert main(["bench-readme", "--out", str(out), "--readme", str(readme)]) == 2
    assert BEGIN in caplog.text and readme.read_text() == "# no markers\n"
    assert main(["bench-readme", "--out", str(tmp_path / "none"), "--readme", str(readme)]) == 2
    assert "run `make bench` first" in caplog.text


def test_the_sweep_serves_every_candidate_in_each_round(tmp_path, tiny_checkpoint, engine_cache, fp32_engines):
    """`make bench-sweep` on the tiny replica: each candidate built with its options and served once per round."""
    from jina_triton_tools.sweep import BASE, run_sweep, sweep_markdown

    rows = run_sweep(tiny_checkpoint, tmp_path, engine_cache, count=8, concurrency=2, rounds=2,
                     candidates=({}, {"fixed_threads": True, "token_budget": 2048}), progress=lambda *_: None)
    assert [(row["fixed_threads"], row["token_budget"]) for row in rows] == [(False, BASE["token_budget"]), (True, 2048)]
    for row in rows:
        assert len(row["rounds_tokens_per_s"]) == 2 and all(value > 0 for value in row["rounds_tokens_per_s"])
        assert row["short_query_ms"] > 0 and row["pss_mb"] > 0 and row["padded_ratio"] >= 1.0
    config = (tmp_path / "repository-1" / "encoder_retrieval" / "config.pbtxt").read_text()
    assert '"fixed_threads" value: { string_value: "True" }' in config and '"2048"' in config
    table = sweep_markdown(rows)
    assert table.count("\n") == 4 and "2 threads" in table and "**(best)**" in table
    assert len(list(tmp_path.glob("sweep-fp32-*.json"))) == 1
