"""The `cuda` target's engine: a task's merged encoder in PyTorch, on the GPU in half
precision (fp32 on a CPU), pooling on the device; it refuses to load below its parity gate.

Its version folder holds encoder.json (the backbone's shape, the adapter's scaling),
backbone.safetensors and adapter.safetensors as the checkpoint has them (merged at
load), and parity.npz (see parity.py).
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np

from .lora import merge_lora
from .parity import GATES, PARITY_FILE, ParityCheck
from .pooling import last_token_torch

CONFIG_FILE = "encoder.json"
BACKBONE_FILE = "backbone.safetensors"
ADAPTER_FILE = "adapter.safetensors"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
COMPILED_WHILE_SERVING = "compiled while serving"


def compiled_while_serving_line(model: str, new: int, total: int, limit: int) -> str:
    """The encoder's warning when a served pass compiled (the GPU check counts these lines)."""
    line = f"{model}: {new} graph(s) {COMPILED_WHILE_SERVING} ({total} in all): a pass shape the warm-up did not cover"
    if total >= limit:
        line += f"; dynamo's recompile limit ({limit}) is reached: new shapes now run eagerly"
    return line


def count_compiled_while_serving(log: str) -> int:
    """Graphs compiled while serving, summed over the encoders' warnings in a log."""
    return sum(int(n) for n in re.findall(rf"\b(\d+) graph\(s\) {re.escape(COMPILED_WHILE_SERVING)} ", log))


class TorchPasses:
    """Passes built on the engine's device (see packing.NumpyPasses): every request's real tokens go over
    once, through pinned host memory (torch's caching host allocator reuses it), each pass is
    gathered on the device, the pooled states come back once: one host sync per execute."""

    def __init__(self, device):
        import torch

        self.torch, self.device, self.pin = torch, device, device.type == "cuda"

    @staticmethod
    def lengths(mask):
        return mask.cpu().numpy().sum(1).astype(np.int64)

    def _upload(self, host):
        if not self.pin:
            return host.to(self.device)
        staging = self.torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def stage(self, requests, starts, lengths, order):
        # numpy's boolean index on the host: torch's took ~70 ms per execute in a GPU stub (2026-12-04)
        flat = np.concatenate([ids.cpu().numpy()[mask.cpu().numpy().astype(bool)] for ids, mask in requests])
        return [self._upload(self.torch.from_numpy(flat)),
                *(self._upload(self.torch.from_numpy(a)) for a in (starts, lengths, order))]

    def reorder(self, staged, order):
        return [*staged[:3], self._upload(self.torch.from_numpy(order))]

    def gather(self, staged, begin: int, end: int, longest: int):
        torch = self.torch
        flat, starts, lengths, order = staged
        taken = order[begin:end]
        steps = torch.arange(longest, device=self.device)
        mask = steps[None, :] < lengths[taken][:, None]
        index = (starts[taken][:, None] + steps[None, :]).clamp_(max=flat.numel() - 1)
        return torch.where(mask, flat[index], 0), mask.long()

    def output(self, count: int, width: int):
        return self.torch.empty((count, width), dtype=self.torch.float32, device=self.device)

    @staticmethod
    def scatter(out, staged, begin: int, end: int, pooled) -> None:
        out[staged[3][begin:end]] = pooled.float()

    def finish(self, out):
        if not self.pin:
            return out.cpu()
        host = self.torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        self.torch.cuda.current_stream(self.device).synchronize()  # the execute's one sync
        return host


class TorchEngine:
    def __init__(self, folder: Path, precision: str, device: str | None = None, threads: int | None = None,
                 compile_buckets: tuple[int, ...] = (), cudnn_attention: bool = False):
        import torch
        from safetensors.torch import load_file

        from .eurobert import EuroBert

        if precision not in GATES:
            raise ValueError(f"precision must be one of {', '.join(GATES)}, not {precision!r}")
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # a CPU has bf16 kernels but no fast fp16 ones: there fp16 runs as fp32, bf16 as asked
        self.precision = precision if self.device.type == "cuda" or precision == "bf16" else "fp32"
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        if self.device.type == "cuda":
            # Measured on an H200 (gpu-check, 2026-12-04): the bare engine fell from 659k to 318k real
            # tokens/s when its requests met in a new order each round (new pass shapes), and the
            # served encoder's thread sat in SDPA on the CPU while the GPU idled. On Hopper SDPA takes
            # cuDNN's attention for a boolean mask, and cuDNN builds a graph on the CPU for every new
            # [rows, length]; packed passes rarely repeat one. Confirmed there the same day: shuffled,
            # 648k tokens/s with it off, 341k with it allowed (the check's engine_shuffled_cudnn row).
            torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        config = json.loads((folder / CONFIG_FILE).read_text())
        state = {key.removeprefix("model."): value.float()
                 for key, value in load_file(str(folder / BACKBONE_FILE)).items()}
        merge_lora(state, load_file(str(folder / ADAPTER_FILE)), float(config["lora_scaling"]))
        model = EuroBert(config)
        model.load_state_dict(state, strict=True)
        self.model = model.placed(self.device, getattr(torch, DTYPES[self.precision])).eval()
        self.passes = TorchPasses(self.device)
        self.vocab_size = int(config["vocab_size"])
        self.width = int(config["hidden_size"])
        self.compiled = CompiledShapes(self.model, compile_buckets) if compile_buckets else None

    @property
    def graphs(self) -> int:
        """Graphs torch.compile made so far (0 eager)."""
        return self.compiled.graphs if self.compiled is not None else 0

    def forward(self, input_ids, attention_mask):
        """ids, mask [b, T] (on any device) -> pooled [b, H] on the engine's device, not synced."""
        torch = self.torch
        with torch.inference_mode():
            ids = input_ids.to(self.device, non_blocking=True)
            mask = attention_mask.to(self.device, non_blocking=True)
            if self.compiled is not None:
                return self.compiled(ids, mask)
            return eager(self.model, ids, mask)

    def embed(self, input_ids, attention_mask) -> np.ndarray:
        """The same on the host, as float32 numpy (parity, calibration)."""
        return self.forward(input_ids, attention_mask).float().cpu().numpy()

    def check_parity(self, folder: Path, what: str) -> float:
        check = ParityCheck.load(folder / PARITY_FILE)
        ids, mask = (self.torch.from_numpy(a.astype("int64")) for a in (check.input_ids, check.attention_mask))
        return check.gate(self.embed(ids, mask), self.precision, what)

    def warm_up(self, token_budget: int) -> None:
        """The first request must not pay for kernel selection, allocation or compilation: every
        compiled length bucket runs once here (state the time it takes: the load time)."""
        torch = self.torch
        shapes = [(1, 8), (4, 64), (max(1, token_budget // 512), 512)] if self.device.type == "cuda" else [(1, 8)]
        if self.compiled is not None:
            shapes += [(max(1, min(4, token_budget // length)), length) for length in self.compiled.buckets]
        for rows, length in shapes:
            ids = torch.ones((rows, min(length, token_budget)), dtype=torch.int64)
            self.forward(ids, torch.ones_like(ids))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class CompiledShapes:
    """The model through `torch.compile`, one graph per length bucket, each dynamic in rows: each
    pass is padded to the next bucket, so a handful of compiled graphs cover every pass and fused
    kernels replace most of the ~560 launches of an eager forward. Compiled during warm-up.

    Served on an H200 (2026-12-04) the first version apparently recompiled while serving (p95 3.8 s
    at 16 users): dynamo specializes a dimension of size 1, so a one-row pass at a length not warmed
    meant a new graph, and so did a pass whose tensors were made outside inference mode where the
    warm-up's were made inside it. Hence every pass copied into new tensors, rows padded to at least
    MIN_ROWS (copies of the first row, dropped after) and marked dynamic *without* bounds: a bounded
    dimension is a strict constraint, and inductor's GPU kernels guard rows x length x width against
    32-bit indexing, which would then fail the load.
    Automatic dynamic shapes are off during the calls so that each bucket keeps a static-length graph
    of its own (with them on, the second bucket turns the length dynamic). `graphs` counts the graphs
    compiled; past dynamo's recompile limit (`limit`) new shapes run eagerly without a word from dynamo,
    which the encoder's warning says. One call at a time: dynamo's settings are process-wide.
    tests/test_compiled_shapes.py. NOT RUN on a GPU since these fixes (here: the box emulation and a
    counting backend); off by default until a GPU check shows no graph compiled while serving."""

    MIN_ROWS = 2
    ONE_AT_A_TIME = threading.Lock()  # dynamo's settings are the process's, whichever instance patches them

    def __init__(self, model, buckets: tuple[int, ...], backend="inductor"):
        import torch
        import torch._dynamo

        self.torch, self.buckets = torch, tuple(sorted(buckets))
        self.utf8 = utf8_locale()
        self.limit = max(8, 2 * len(self.buckets))
        self.settings = torch._dynamo.config.patch(automatic_dynamic_shapes=False, cache_size_limit=self.limit)
        self.model = model
        self.graphs = 0
        compile_graph = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

        def counted(graph, example_inputs):
            self.graphs += 1
            return compile_graph(graph, example_inputs)

        self.compiled = torch.compile(model, backend=counted)

    def bucket(self, length: int) -> int | None:
        return next((b for b in self.buckets if b >= length), None)

    def __call__(self, ids, mask):
        torch = self.torch
        length = self.bucket(ids.shape[1])
        rows = ids.shape[0]
        if length is None or rows == 0:  # longer than every bucket (or nothing): eager
            return eager(self.model, ids, mask)
        # always new tensors, made here: a tensor made under inference mode and one made outside it differ
        # in dispatch keys, and dynamo compiles a graph for each (the box emulation, 2026-12-04)
        width = ids.shape[1]
        padded = [t.new_zeros((max(rows, self.MIN_ROWS), length)) for t in (ids, mask)]
        for into, source in zip(padded, (ids, mask)):
            into[:rows, :width] = source
            into[rows:, :width] = source[:1]
            torch._dynamo.mark_dynamic(into, 0)
        with self.ONE_AT_A_TIME, self.settings:
            states = self.compiled(*padded)
        return last_token_torch(states, padded[1].sum(1))[:rows]


def eager(model, ids, mask):
    """The model's pooled states, uncompiled."""
    return last_token_torch(model(ids, mask), mask.sum(1))


UTF8_LOCALES = ("C.UTF-8", "C.utf8", "en_US.UTF-8")


def utf8_locale() -> bool:
    """Inductor reads its kernel templates with open()'s default encoding. A Triton stub starts its
    interpreter isolated, in the C locale whatever LANG says, so that encoding is ASCII and the first
    torch.compile fails on a UTF-8 template (seen in the box emulation, 2026-12-04): switch LC_CTYPE
    to a UTF-8 locale, the first this system has; False where it has none (compiling may then fail)."""
    import locale

    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return True
    for name in UTF8_LOCALES:
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return True
        except locale.Error:
            continue
    return False
