"""The bare engine in several processes at once, sharing the cores as the served encoder instances
do: each process takes the next pass from one counter (as a free Triton instance takes the next
request) and runs it on its wide session, or on its 1-thread one while another process runs a
pass (core_share.py). On 2 cores two such processes do more work than one process on 2 threads,
so the bench's engine row, the ceiling the served rows are held to, includes this layout.
"""
from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path


def _worker(graph: str, adapter: str, vocab_size: int, threads: int, shared: bool, passes: list, folder: str,
            counter, loaded, go, results) -> None:
    from jina_triton_pipeline.core_share import PassRegistry
    from jina_triton_pipeline.onnx_engine import OnnxEngine, ort_session
    from jina_triton_pipeline.tokenization import right_pad

    engine = OnnxEngine(ort_session(Path(graph), threads), vocab_size, Path(adapter),
                        narrow=ort_session(Path(graph), 1) if shared else None,
                        registry=PassRegistry(Path(folder)) if shared else None)
    engine.warm_up()
    loaded.put(True)
    go.wait()
    cpu = time.process_time()
    while True:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        if index >= len(passes):
            break
        engine.forward(*right_pad(passes[index]))
    results.put((time.monotonic(), {width: count for width, (count, _) in engine.take_passes().items()},
                 time.process_time() - cpu))
    engine.registry.close()


def run_in_processes(graph: Path, adapter: Path, vocab_size: int, passes: list[list[list[int]]], processes: int,
                     threads: int, shared: bool = True) -> tuple[float, dict[str, int], float]:
    """Seconds from the start until the last of `processes` engine processes ran out of `passes` (each
    a list of token lists, right-padded into one forward), the passes run on each session, and the
    CPU seconds the processes spent on them."""
    context = multiprocessing.get_context("spawn")  # no onnxruntime or torch state forked from this process
    counter, loaded, go, results = context.Value("i", 0), context.Queue(), context.Event(), context.Queue()
    with tempfile.TemporaryDirectory(prefix="jina-engine-passes-") as folder:
        workers = [context.Process(target=_worker, args=(str(graph), str(adapter), vocab_size, threads, shared,
                                                         passes, folder, counter, loaded, go, results))
                   for _ in range(processes)]
        for worker in workers:
            worker.start()
        try:
            _collect(loaded, workers)
            go.set()
            started = time.monotonic()
            finished = _collect(results, workers)
        finally:
            for worker in workers:
                worker.join(timeout=60)
                if worker.is_alive():
                    worker.kill()
    counts: dict[str, int] = {}
    for _, used, _ in finished:
        for width, count in used.items():
            counts[width] = counts.get(width, 0) + count
    return max(end for end, _, _ in finished) - started, counts, sum(cpu for _, _, cpu in finished)


def _collect(messages, workers) -> list:
    """One message from every worker; a worker that died first fails the run at once."""
    import queue

    found = []
    while len(found) < len(workers):
        try:
            found.append(messages.get(timeout=1))
        except queue.Empty:
            dead = [worker.exitcode for worker in workers if worker.exitcode]
            if dead:
                raise RuntimeError(f"an engine process failed (exit codes {dead})") from None
    return found
