"""FP8 (e4m3) matrix products for the fast sampling path: an experiment toward issue 5's 11 images/s.

Why: at batch 256 on an H100 a bf16 SiT-XL/2 step spends 82 of its 123 ms in matrix products that already run at
about 650 TFLOP/s, and 11 images/s leaves 93 ms for everything; FP8 products measured 894 to 1,135 TFLOP/s at the
XL shapes (benchmarks/results/gpu_profile_*.md). The cost is accuracy: e4m3 keeps 3 mantissa bits, and one
product with row-wise scales has about 3.7% relative error (bf16: 0.17%), so whether the final images stay within
the 2% "same images" tolerance is measured by benchmarks/gpu_sampler.py, not assumed. Experimental: only used
when asked for (precision "fp8" or "fp8-mlp").

Scheme: weights quantised once per output row (scale = row max / 448), activations per token inside the compiled
block (so inductor fuses the max, division and cast into the LayerNorm / GELU kernel before the product), then
torch._scaled_mm with the two scale vectors and the bias, bf16 out. Runs on the CPU too (for the tests).
"""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
LAYER_SETS = {"fp8": ("qkv", "proj", "fc1", "fc2"), "fp8-mlp": ("fc1", "fc2")}
# Hopper's FP8 tensor cores can skip the periodic promotion of partial sums to full fp32 ("fast accumulation"):
# faster, less exact. Off until benchmarks/gpu_sampler.py ("+fa" variants) has measured both speed and the 2%
# image tolerance with it. The CPU ignores it.
FAST_ACCUM = False


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale as e4m3, scale) with one float32 scale per row: row max maps to e4m3's largest value."""
    scale = (x.float().abs().amax(dim=-1, keepdim=True) / E4M3_MAX).clamp(min=1e-12)
    return (x.float() / scale).to(E4M3), scale


def attach_linear(layer) -> None:
    """Give one nn.Linear its e4m3 weight and per-output-row scales, as plain attributes (not parameters: the
    network's state_dict, and so its fingerprint, stays that of the bf16 copy)."""
    w8, scale = quantize_rows(layer.weight.detach())
    layer.fp8_weight, layer.fp8_scale = w8, scale.reshape(1, -1)  # (out, in), (1, out)


def attach(net, layers) -> None:
    """FP8 weights for the named linears (qkv, proj, fc1, fc2) of every block."""
    for block in net.blocks:
        for name, layer in (("qkv", block.attn.qkv), ("proj", block.attn.proj), ("fc1", block.mlp.fc1),
                            ("fc2", block.mlp.fc2)):
            if name in layers:
                attach_linear(layer)


def linear(layer, x: torch.Tensor) -> torch.Tensor:
    """layer(x), through an FP8 product where attach() gave the layer FP8 weights."""
    w8 = getattr(layer, "fp8_weight", None)
    if w8 is None:
        return layer(x)
    flat = x.reshape(-1, x.shape[-1])
    x8, sx = quantize_rows(flat)
    out = torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=layer.fp8_scale, bias=layer.bias, out_dtype=x.dtype,
                           use_fast_accum=FAST_ACCUM)
    return out.reshape(*x.shape[:-1], w8.shape[0])
