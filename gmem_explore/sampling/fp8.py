"""FP8 (e4m3) matrix products for the fast sampling path: an experiment toward issue 5's 11 images/s.

Why: at batch 256 on an H100 a bf16 SiT-XL/2 step spends 82 of its 123 ms in matrix products that already run at
about 650 TFLOP/s, and 11 images/s leaves 93 ms for everything; FP8 products measured 894 to 1,135 TFLOP/s at the
XL shapes (benchmarks/results/gpu_profile_*.md). The cost is accuracy: e4m3 keeps 3 mantissa bits, and one
product with row-wise scales has about 3.7% relative error (bf16: 0.17%), so whether the final images stay within
the 2% "same images" tolerance is measured, not assumed: 0.92% at most on SiT-XL/2 with random weights
(benchmarks/gpu_sampler.py, H100), but up to 7.9% on the trained emoji-32 model at 250 steps
(benchmarks/fp8_error_trained.py). So only used when asked for (precision "fp8" or "fp8-mlp"), never by default.

Scheme: weights quantised once per output row (scale = row max / 448), activations by one calibrated scale per
layer (FastOptions.fp8_static_scales; or, with it off, per token), quantised inside the compiled block so inductor
fuses the cast into the LayerNorm / GELU kernel before the product, then torch._scaled_mm with the scales and the
bias, bf16 out. Runs on the CPU too (for the tests).

Static scales: one fixed scale per layer input instead of per token. The H100 profile of the per-token scheme
(benchmarks/results/gpu_profile_*_fp8_mk.md) spends 54 of a 119 ms step in the kernels that find each token's max
and divide by it (a second pass over fc1's 604 MB output at batch 256); a fixed scale makes quantisation a plain
element-wise cast fused into the GELU / LayerNorm kernel. e4m3 is a floating format, so one scale per tensor loses
no relative precision across tokens until a value falls 2^15 below the largest; the scale comes from `calibrate` (a
few forwards on fixed synthetic inputs, CALIBRATION_MARGIN of headroom, saturating clamp above it), never from the
run's own images, so each image stays independent of its batch.
"""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
LAYER_SETS = {"fp8": ("qkv", "proj", "fc1", "fc2"), "fp8-mlp": ("fc1", "fc2")}
CALIBRATION_MARGIN = 4.0  # headroom over the calibration's largest input: 2 of e4m3's ~15 binades of range
CALIBRATION_TIMES = (1.0, 0.75, 0.5, 0.25, 0.05)  # the interpolant's time: noise at 1, nearly clean near 0
CALIBRATION_IMAGES = 4


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


@torch.no_grad()
def calibrate(net) -> None:
    """Give every layer with FP8 weights a fixed input scale (fp8_input_scale, a float32 0-d tensor): the largest
    |input| seen over bf16 forwards of the network on fixed synthetic inputs (seeded Gaussian latents, L2-normalised
    Gaussian snippets, CALIBRATION_TIMES), times CALIBRATION_MARGIN, over e4m3's largest value."""
    layers = [m for m in net.modules() if hasattr(m, "fp8_weight")]
    if not layers:
        return
    c, p = net.config, next(net.parameters())
    seen = {id(m): torch.zeros((), device=p.device) for m in layers}

    def record(module, inputs):
        seen[id(module)] = torch.maximum(seen[id(module)], inputs[0].detach().float().abs().amax())

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        g = torch.Generator().manual_seed(0)
        n = CALIBRATION_IMAGES
        x = torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g)
        snippets = torch.nn.functional.normalize(torch.randn(n, c.snippet_dim, generator=g), dim=-1)
        for t in CALIBRATION_TIMES:
            net(x.to(p.device, p.dtype), torch.full((n,), t, device=p.device, dtype=p.dtype),
                snippets.to(p.device, p.dtype))
    finally:
        for h in hooks:
            h.remove()
    for m in layers:
        m.fp8_input_scale = (seen[id(m)] * CALIBRATION_MARGIN / E4M3_MAX).clamp(min=1e-12)


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale as e4m3, saturating at +-448 (a plain cast would turn values beyond the calibration into NaN)."""
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def linear(layer, x: torch.Tensor, static_scales: bool = True, fast_accum: bool = True) -> torch.Tensor:
    """layer(x), through an FP8 product where attach() gave the layer FP8 weights: the input scaled by the layer's
    calibrated scale (static_scales) or per token; fast_accum lets Hopper skip promoting partial sums to fp32."""
    w8 = getattr(layer, "fp8_weight", None)
    if w8 is None:
        return layer(x)
    flat = x.reshape(-1, x.shape[-1])
    if static_scales:  # the input scale moves to the weight side: row-wise products want an (M, 1) scale_a
        static = layer.fp8_input_scale
        x8, sx, sw = quantize_static(flat, static), flat.new_ones(flat.shape[0], 1, dtype=torch.float32), \
            layer.fp8_scale * static
    else:
        (x8, sx), sw = quantize_rows(flat), layer.fp8_scale
    out = torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, bias=layer.bias, out_dtype=x.dtype,
                           use_fast_accum=fast_accum)
    return out.reshape(*x.shape[:-1], w8.shape[0])
