"""The `cpu` target's engine: the backbone's ONNX graph (pooling inside it) on onnxruntime's CPU
provider, with one task's LoRA adapter bound as its inputs; and the one place sessions are set up
(build, bench, serving).

Weights once in memory for every encoder stub: onnxruntime pre-packs a MatMul's weights into its
kernels' layout at load (without it a short query costs 2x: every call would re-pack them), and
pre-packed weights are private to a process. So the build saves the graph *with* its pre-packed
weights in the external data file (`prepacked.onnx`, for this CPU's kernels and this onnxruntime);
a session of it maps them in place from the file, and every stub shares one copy through the page
cache. The layout depends on the CPU's instruction set: on another machine the stamp does not
match and the encoder loads the portable graph instead (correct, each stub its own weights).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .core_share import PassRegistry, usable_cores, wide_fits
from .internals import ATTENTION_MASK, INPUT_IDS, POOLED_STATE
from .packing import NumpyPasses

ADAPTER_FILE = "adapter.npz"   # a task's adapter as the backbone takes it: A and B (scaled) by input name
PREPACKED_GRAPH = "prepacked.onnx"
PREPACKED_STAMP = "prepacked.json"  # the machine the pre-packed weights were laid out for
# instruction sets onnxruntime's CPU kernels choose their weight layout by
ISA_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
             "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def machine_key() -> dict:
    """What pre-packed weights depend on: onnxruntime's version and the CPU's instruction sets."""
    import onnxruntime as ort

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"onnxruntime": ort.__version__, "isa": [flag for flag in ISA_FLAGS if flag in flags]}


def serving_graph(folder: Path, portable: str) -> tuple[Path, str]:
    """The graph an encoder loads from its folder, and why: the pre-packed one where it was laid
    out for this machine, else the portable one."""
    stamp = folder / PREPACKED_STAMP
    if not stamp.is_file() or not (folder / PREPACKED_GRAPH).is_file():
        return folder / portable, "no pre-packed weights in the repository: each encoder packs its own copy"
    built_for = json.loads(stamp.read_text())
    if built_for != machine_key():
        return folder / portable, (f"pre-packed weights were laid out for {built_for}, this machine is "
                                   f"{machine_key()}: each encoder packs its own copy (rebuild the "
                                   f"repository on this machine kind to share one)")
    return folder / PREPACKED_GRAPH, "pre-packed weights mapped from the file, shared by every encoder"


def session_options(threads: int | None = None):
    """`threads` intra-op threads (default: up to 2), one inter-op, no spinning after a run (an idle
    session must not take the cores from a busy one)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 2)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def save_prepacked(source: Path, folder: Path, threads: int | None = None) -> Path:
    """prepacked.onnx (+ .data) in `folder`: `source` optimized for this machine, its weights
    pre-packed into the external data file."""
    import onnxruntime as ort

    options = session_options(threads)
    target = folder / PREPACKED_GRAPH
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     PREPACKED_GRAPH + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    options.log_severity_level = 3  # it warns that the result is hardware-specific: that is the point
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    (folder / PREPACKED_STAMP).write_text(json.dumps(machine_key()))
    return target


def run_session(session, input_ids, attention_mask, extra: dict | None = None) -> np.ndarray:
    feed = {INPUT_IDS: np.asarray(input_ids, np.int64), ATTENTION_MASK: np.asarray(attention_mask, np.int64)}
    return session.run([POOLED_STATE], {**feed, **(extra or {})})[0]


def load_adapter(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: np.ascontiguousarray(data[name], np.float32) for name in data.files}


class OnnxEngine:
    """The backbone with one task's adapter: (input_ids, attention_mask) -> pooled_state."""

    passes = NumpyPasses

    def __init__(self, session, vocab_size: int, adapter: Path | None = None, narrow=None,
                 registry: PassRegistry | None = None):
        """`session`: an ort_session of the graph (several engines may share one); `adapter`: the
        task's adapter.npz (None for a graph with the adapter folded in); `narrow`: a 1-thread session
        of the same graph, taken for a pass while `registry` counts too many passes running beside it
        to run wide without more threads than cores (core_share.py)."""
        import onnxruntime as ort

        self.session = session
        self.vocab_size = vocab_size
        self.registry = registry or PassRegistry(None)
        wanted = {value.name for value in self.session.get_inputs()} - {INPUT_IDS, ATTENTION_MASK}
        self.adapter_inputs = load_adapter(adapter) if wanted else {}
        if set(self.adapter_inputs) != wanted:
            raise ValueError(f"{adapter} does not fit the graph: {len(wanted ^ set(self.adapter_inputs))} "
                             f"inputs differ")
        # every run hands its activations back: else the arena keeps the largest pass's (GBs for one 8K
        # text) for good, in every stub (measured: no cost in tokens/s, 350 MB less after the bench's load)
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._bound = [ort.OrtValue.ortvalue_from_numpy(array) for array in self.adapter_inputs.values()]
        # the adapter's values once in memory, bound to each session: a run passes only the tokens
        self.bindings = {"wide": self._bind(session)}
        if narrow is not None:
            self.bindings["narrow"] = self._bind(narrow)
        self.pass_counts, self.pass_seconds = dict.fromkeys(self.bindings, 0), dict.fromkeys(self.bindings, 0.0)
        self.threads, self.cores = session.get_session_options().intra_op_num_threads, usable_cores()

    def _bind(self, session):
        binding = session.io_binding()
        for name, value in zip(self.adapter_inputs, self._bound):
            binding.bind_ortvalue_input(name, value)
        return session, binding

    def warm_up(self) -> None:
        """One short pass on each session: the first run allocates ~160 MB once (kernel buffers),
        here rather than on a request, and before the stub hands its free heap back."""
        ids = np.ones((1, 8), np.int64)
        for width in self.bindings:
            self._run(width, ids, np.ones_like(ids))
        self.take_passes()

    def forward(self, input_ids, attention_mask) -> np.ndarray:
        with self.registry.running() as others:
            narrow = "narrow" in self.bindings and not wide_fits(others, self.threads, self.cores)
            return self._run("narrow" if narrow else "wide", input_ids, attention_mask)

    def take_passes(self) -> dict[str, tuple[int, float]]:
        """(passes, seconds in them) on each session since the last call."""
        taken = {width: (self.pass_counts[width], self.pass_seconds[width]) for width in self.bindings}
        self.pass_counts, self.pass_seconds = dict.fromkeys(self.bindings, 0), dict.fromkeys(self.bindings, 0.0)
        return taken

    def _run(self, width: str, input_ids, attention_mask) -> np.ndarray:
        session, binding = self.bindings[width]
        # bind_cpu_input binds the array's memory without a reference: keep both alive until the run ends
        ids = np.ascontiguousarray(input_ids, np.int64)
        mask = np.ascontiguousarray(attention_mask, np.int64)
        binding.bind_cpu_input(INPUT_IDS, ids)
        binding.bind_cpu_input(ATTENTION_MASK, mask)
        binding.bind_output(POOLED_STATE)
        started = time.perf_counter()
        session.run_with_iobinding(binding, self._shrink)
        pooled = binding.copy_outputs_to_cpu()[0]
        self.pass_seconds[width] += time.perf_counter() - started
        self.pass_counts[width] += 1
        del ids, mask
        return pooled
