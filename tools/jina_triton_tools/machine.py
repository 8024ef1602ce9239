"""What a benchmark ran on, and what that machine can do at most.

Absolute CPU figures move up to 3x between hosts of one kind; a report says which
CPU it ran on (model, family, vector extensions), measures a dense fp32 matmul peak
in the same run, and states every throughput as a fraction of it.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


def cpu_identity() -> dict:
    found = {"model": platform.processor() or platform.machine(), "family": None, "model_id": None,
             "flags": [], "cores": os.cpu_count()}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            found["model"] = value
        elif key == "cpu family":
            found["family"] = value
        elif key == "model" and found["model_id"] is None:
            found["model_id"] = value
        elif key == "flags":
            flags = set(value.split())
            found["flags"] = [flag for flag in VECTOR_FLAGS if flag in flags]
            break
    return found


def _best_seconds(call, repeats: int) -> float:
    call()  # warm
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_peaks(threads: int, size: int = 2048, repeats: int = 8) -> dict[str, float]:
    """Best fp32 GFLOP/s of a square matmul on `threads` threads, per library: torch, and onnxruntime
    (MLAS, the CPU engines' own kernels; on some hosts it is the faster of the two)."""
    import torch

    flop = 2 * size ** 3
    peaks = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        peaks["torch"] = flop / _best_seconds(lambda: a @ b, repeats) / 1e9
    finally:
        torch.set_num_threads(previous)
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return peaks
    square = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", square[:2], square[2:])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": a.numpy(), "b": b.numpy()}
    peaks["onnxruntime"] = flop / _best_seconds(lambda: session.run(None, feeds), repeats) / 1e9
    return peaks


def encoder_flops(config: dict, lengths) -> float:
    """Floating-point operations to encode texts of these token lengths, each on its own (no padding):
    the projections and MLP per token, plus attention's two T x T products per layer."""
    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    layers = int(config["num_hidden_layers"])
    per_token = layers * 2 * (4 * hidden * hidden + 3 * hidden * inner)
    return float(sum(n * per_token + layers * 4 * n * n * hidden for n in lengths))


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in ("onnxruntime", "torch", "transformers", "tokenizers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    found["triton"] = "2.51.0 (nvidia-pytriton 0.7.0)"
    found["code"] = code_version()
    return found


def code_version() -> str:
    """The commit this code was run from (`-dirty` with local changes), or why it is unknown."""
    import subprocess

    try:
        answer = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return answer.stdout.strip() if answer.returncode == 0 else "unknown (not run from a git checkout)"


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (shared pages split among their users), from /proc."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def server_processes(root: int) -> list[tuple[str, int]]:
    """(label, pid) of a server and every process under it: tritonserver, each Python-backend stub
    by its model's name."""
    from jina_triton_serving.triton_process import command_line, descendants, stub_model

    found = []
    for pid in [root, *descendants(root)]:
        argv = command_line(pid)
        if argv is None:
            continue
        model = stub_model(argv)
        found.append((model[0] if model else argv[0].rsplit(b"/", 1)[-1].decode(errors="replace"), pid))
    return found


def server_memory(root: int) -> dict:
    """PSS of a server and every process under it (Triton and its Python-backend stubs), in MB:
    the sum is what the whole server costs the machine, each page counted once."""
    per_process: dict[str, int] = {}
    for label, pid in server_processes(root):
        try:
            per_process[label] = per_process.get(label, 0) + pss_bytes(pid)
        except OSError:  # gone since it was listed
            continue
    return {"total_mb": round(sum(per_process.values()) / 2**20),
            "by_process_mb": {k: round(v / 2**20) for k, v in sorted(per_process.items())}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far, from /proc (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(root: int, others: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far by part: the server's processes grouped (every encoder stub together), and
    `others` (label -> pid: the load generator, a gateway)."""
    parts: dict[str, float] = {}
    for label, pid in [*server_processes(root), *others.items()]:
        part = "encoders" if label.startswith("encoder_") else label
        parts[part] = parts.get(part, 0.0) + cpu_seconds(pid)
    return parts
