"""A LoRA adapter's tensors, unmerged (the `cpu` target's backbone takes them as inputs) or merged
into the backbone's weights: W <- W + (B @ A) * alpha / r (the `cuda` target's torch encoder).
The reference encoder keeps its own path, through peft."""
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


def adapter_pairs(lora: dict, scaling: float) -> dict:
    """module name -> (A [r, in], B [out, r] x scaling), from an adapter's tensors (numpy or torch)."""
    pairs = {}
    for key, lora_a in lora.items():
        if ".lora_A." in key:
            module = key[len(PEFT_PREFIX):].split(".lora_A.")[0]
            pairs[module] = (lora_a, lora[key.replace(".lora_A.", ".lora_B.")] * scaling)
    return pairs


def input_names(module: str) -> tuple[str, str]:
    """The backbone graph's inputs that carry one module's adapter."""
    return f"{module}.lora_A", f"{module}.lora_B"
