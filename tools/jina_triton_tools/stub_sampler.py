"""A sampling profiler for the GPU check's Triton stubs (never part of a served repository).

`gpu-check --sample-stacks` adds a `.pth` to the stub environments that calls `start(folder)`
in every stub the check's Triton starts. A thread then looks at every other thread's Python
stack every `interval` seconds and writes the most frequent stacks to
`folder/stacks-<pid>.txt` every 2 s. A stub's main thread has a Python frame only while the
model's code runs, so its samples show where an execute's wall time goes (GIL-bound: a C call
that holds the GIL shows up at the next line that runs).
"""
from __future__ import annotations

import collections
import faulthandler
import os
import re
import tempfile
import threading
import time

DEPTH = 8
WRITE_EVERY_S = 2.0


THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)")
FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')


def _stacks(dump: str) -> dict[int, str]:
    """faulthandler's text of every thread's stack -> {thread id: "file:function:line < ..."}."""
    stacks: dict[int, list[str]] = {}
    names: list[str] = []
    for line in dump.splitlines():
        if thread := THREAD.match(line):
            names = stacks.setdefault(int(thread.group(1), 16), [])
        elif (frame := FRAME.match(line)) and len(names) < DEPTH:
            names.append(f"{os.path.basename(frame.group(1))}:{frame.group(3)}:{frame.group(2)}")
    return {ident: " < ".join(names) for ident, names in stacks.items()}


def _write(path: str, header: str, counts: collections.Counter, samples: int) -> None:
    lines = [header, f"samples {samples}"]
    lines += [f"{count:7d}  {thread}  {stack}" for (thread, stack), count in counts.most_common(60)]
    with open(path + ".tmp", "w") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def _look(me: int, counts: collections.Counter, dump) -> None:
    """One sample, read by faulthandler in C, with no Python frame object made: a frame held here
    while its thread returns keeps that function's locals alive, and torch restores state in
    destructors (dynamo ends a compile by dropping an inference-mode guard: with frames from
    sys._current_frames, a compile in a sampled stub failed with "Global grad_mode state changed
    while dynamo tracing", box emulation 2026-12-04)."""
    dump.seek(0)
    dump.truncate()
    faulthandler.dump_traceback(dump, all_threads=True)
    dump.seek(0)
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, stack in _stacks(dump.read().decode(errors="replace")).items():
        if ident != me:
            counts[(names.get(ident, "main?"), stack)] += 1


def _sample(folder: str, interval: float, stop: threading.Event) -> None:
    me = threading.get_ident()
    with open("/proc/self/cmdline", "rb") as cmdline:
        header = " ".join(part.decode(errors="replace") for part in cmdline.read().split(b"\0")[:3])
    path = os.path.join(folder, f"stacks-{os.getpid()}.txt")
    counts: collections.Counter = collections.Counter()
    samples, written = 0, time.monotonic()
    with tempfile.TemporaryFile() as dump:
        while not stop.wait(interval):
            _look(me, counts, dump)
            samples += 1
            if time.monotonic() - written > WRITE_EVERY_S:
                _write(path, header, counts, samples)
                written = time.monotonic()
    if samples:  # what was sampled since the last write, once stopped
        _write(path, header, counts, samples)


def start(folder: str, interval: float = 0.01) -> threading.Event:
    """Samples until the process ends or the event returned is set."""
    os.makedirs(folder, exist_ok=True)
    stop = threading.Event()
    threading.Thread(target=_sample, args=(folder, interval, stop), name="stack-sampler", daemon=True).start()
    return stop


def merged(folder, models: tuple[str, ...], top: int = 30) -> str:
    """One text of the sampled stacks: for each model named, its stub whose main thread ran the most
    once loaded (the device tool carries few files)."""
    import pathlib

    best: dict[str, tuple[int, str, list[str]]] = {}
    for path in sorted(pathlib.Path(folder).glob("stacks-*.txt")):
        text = path.read_text(errors="replace").splitlines()
        model = next((m for m in models if text and f"/{m}/" in text[0]), None)
        if model:
            busy = sum(int(line.split()[0]) for line in text[2:]  # the main thread, past loading
                       if "  MainThread  " in line and "initialize" not in line and "<frozen" not in line)
            if model not in best or busy > best[model][0]:
                best[model] = (busy, path.name, text)
    parts = []
    for model in models:
        if model in best:
            busy, name, text = best[model]
            parts += [f"## {model} ({name}, {busy} samples of its main thread once loaded)", *text[1:top + 2], ""]
    return "\n".join(parts)


PTH_LINE = ("import os, importlib; os.environ.get('JINA_CHECK_STACKS') and "
            "importlib.import_module('jina_triton_tools.stub_sampler').start(os.environ['JINA_CHECK_STACKS'])\n")
PTH_NAME = "zz_jina_check_stacks.pth"   # after the environment's own .pth, which makes the import possible
