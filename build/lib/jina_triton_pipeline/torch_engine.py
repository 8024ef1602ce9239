"""The `cuda` target's engine: a task's merged encoder in PyTorch, on the GPU in half
precision (fp32 on a CPU), pooling on the device; it refuses to load below its parity gate.

Its version folder holds encoder.json (the backbone's shape, the adapter's scaling),
backbone.safetensors and adapter.safetensors as the checkpoint has them (merged at
load), and parity.npz (see parity.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from .lora import merge_lora
from .parity import GATES, PARITY_FILE, ParityCheck
from .pooling import last_token_torch

CONFIG_FILE = "encoder.json"
BACKBONE_FILE = "backbone.safetensors"
ADAPTER_FILE = "adapter.safetensors"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchRows:
    """Packed chunks in (pinned, on a GPU host) CPU memory; pooled rows gathered on the CPU."""

    def __init__(self, pin: bool):
        import torch

        self.torch, self.pin = torch, pin

    @staticmethod
    def lengths(mask):
        return mask.sum(1)

    def ids(self, rows: int, length: int):
        zeros = self.torch.zeros
        return (zeros((rows, length), dtype=self.torch.int64, pin_memory=self.pin),
                zeros((rows, length), dtype=self.torch.int64, pin_memory=self.pin))

    def output(self, rows: int, width: int):
        return self.torch.zeros((rows, width), dtype=self.torch.float32)


class TorchEngine:
    def __init__(self, folder: Path, precision: str, device: str | None = None, threads: int | None = None):
        import torch
        from safetensors.torch import load_file

        from .eurobert import EuroBert

        if precision not in GATES:
            raise ValueError(f"precision must be one of {', '.join(GATES)}, not {precision!r}")
        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # half precision is for the GPU; a CPU runs the same engine in fp32
        self.precision = precision if self.device.type == "cuda" else "fp32"
        if self.device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        config = json.loads((folder / CONFIG_FILE).read_text())
        state = {key.removeprefix("model."): value.float()
                 for key, value in load_file(str(folder / BACKBONE_FILE)).items()}
        merge_lora(state, load_file(str(folder / ADAPTER_FILE)), float(config["lora_scaling"]))
        model = EuroBert(config)
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device, getattr(torch, DTYPES[self.precision])).eval()
        self.rows = TorchRows(pin=self.device.type == "cuda")
        self.vocab_size = int(config["vocab_size"])
        self.width = int(config["hidden_size"])

    def forward(self, input_ids, attention_mask):
        """ids, mask [b, T] (CPU) -> pooled [b, H] float32 on the CPU."""
        torch = self.torch
        with torch.inference_mode():
            ids = input_ids.to(self.device, non_blocking=True)
            mask = attention_mask.to(self.device, non_blocking=True)
            pooled = last_token_torch(self.model(ids, mask), mask.sum(1))
            return pooled.float().cpu()

    def check_parity(self, folder: Path, what: str) -> float:
        check = ParityCheck.load(folder / PARITY_FILE)
        ids, mask = (self.torch.from_numpy(a.astype("int64")) for a in (check.input_ids, check.attention_mask))
        return check.gate(self.forward(ids, mask).numpy(), self.precision, what)

    def warm_up(self, token_budget: int) -> None:
        """The first request must not pay for kernel selection and allocation."""
        torch = self.torch
        shapes = ((1, 8), (4, 64), (max(1, token_budget // 512), 512)) if self.device.type == "cuda" else ((1, 8),)
        for rows, length in shapes:
            ids = torch.ones((rows, min(length, token_budget)), dtype=torch.int64)
            self.forward(ids, torch.ones_like(ids))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
