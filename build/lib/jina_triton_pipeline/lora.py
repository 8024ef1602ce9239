"""Merging a LoRA adapter into the backbone's weights: W <- W + (B @ A) * alpha / r.

The one merge of the project: the ONNX export and the torch encoder both call it
(the reference encoder keeps the adapter unmerged, through peft)."""
from __future__ import annotations

PEFT_PREFIX = "base_model.model."


def merge_lora(state: dict, lora: dict, scaling: float) -> int:
    """Add every adapter pair into `state` (float tensors, modified in place); returns how many."""
    import torch

    merged = 0
    with torch.no_grad():
        for key, lora_a in lora.items():
            if ".lora_A." not in key:
                continue
            target = key[len(PEFT_PREFIX):].split(".lora_A.")[0] + ".weight"
            lora_b = lora[key.replace(".lora_A.", ".lora_B.")]
            weight = state[target]
            weight += (lora_b.to(weight.dtype) @ lora_a.to(weight.dtype)) * scaling
            merged += 1
    return merged
