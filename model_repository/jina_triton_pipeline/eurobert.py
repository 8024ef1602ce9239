"""EuroBERT, the backbone of jina-embeddings-v5-text-nano, in plain PyTorch: pre-norm Llama blocks
without a causal mask, RMSNorm, SwiGLU, RoPE (rotate-half), the final norm before pooling.

The `cuda` target runs this module in the Python backend: no transformers import in
the server, SDPA attention, any device and precision. Module names follow the
checkpoint's keys, so its safetensors load as they are. The reference encoder
(transformers' EuroBertModel with peft) stays independent; the parity gate at load
holds the two together.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class LoraLinear(nn.Linear):
    """A bias-free Linear that adds a low-rank update when an adapter is set: y = xW^T + (xA^T)B^T,
    B already scaled by alpha/r. Unmerged, one backbone serves every task (the `cpu` target's ONNX
    graph takes A and B as inputs); merged into W (lora.merge_lora) when one task is all there is."""

    def __init__(self, fan_in: int, fan_out: int):
        super().__init__(fan_in, fan_out, bias=False)
        self.adapter: tuple | None = None

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.adapter is not None:
            a, b = self.adapter
            y = y + F.linear(F.linear(x, a), b)
        return y


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (LoraLinear(width, width) for _ in range(4))

    def forward(self, x, cos, sin, key_mask):
        batch, length, width = x.shape

        def heads(projection):
            return projection(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # bidirectional
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.gate_proj = LoraLinear(width, inner)
        self.up_proj = LoraLinear(width, inner)
        self.down_proj = LoraLinear(inner, width)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        width, eps = config["hidden_size"], config["rms_norm_eps"]
        self.input_layernorm = RMSNorm(width, eps)
        self.self_attn = Attention(width, config["num_attention_heads"])
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.mlp = MLP(width, config["intermediate_size"])

    def forward(self, h, cos, sin, key_mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, key_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def rotate(x, cos, sin):
    """RoPE, Llama's rotate-half convention."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class EuroBert(nn.Module):
    """input_ids, attention_mask [B, T] -> last_hidden_state [B, T, H] (after the final norm)."""

    def __init__(self, config: dict):
        super().__init__()
        width, heads = config["hidden_size"], config["num_attention_heads"]
        self.embed_tokens = nn.Embedding(config["vocab_size"], width)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(width, config["rms_norm_eps"])
        head_dim = width // heads
        inv_freq = 1.0 / (float(config["rope_theta"]) ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def placed(self, device, dtype) -> "EuroBert":
        """The weights on `device` in `dtype`; RoPE's frequencies stay fp32 (rounded to fp16 they
        shift the rotation's phase by up to ~1e-3 x the position: far off at 8K tokens)."""
        inv_freq = self.inv_freq.float()
        self.to(device, dtype)
        self.inv_freq = inv_freq.to(device)
        return self

    def lora_modules(self) -> list[tuple[str, LoraLinear]]:
        """Every module a LoRA adapter targets, named as the checkpoint names it, in one fixed order."""
        return [(name, module) for name, module in self.named_modules() if isinstance(module, LoraLinear)]

    def use_adapter(self, pairs: dict | None) -> None:
        """module name -> (A [r, in], B [out, r] scaled): each module's low-rank update; None: none."""
        for name, module in self.lora_modules():
            module.adapter = None if pairs is None else pairs[name]

    def forward(self, input_ids, attention_mask):
        h = self.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos().to(h.dtype)[None, None], angles.sin().to(h.dtype)[None, None]
        key_mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            h = layer(h, cos, sin, key_mask)
        return self.norm(h)
