"""The fast path's network step for GMem v2's LightningDiT (models/lightningdit.py); fast.py runs the plan, the loop,
the compiled and graphed step for it as for SiT, with these functions in place of SiT's block.

block_forward is LightningDiT's Block.forward with its adaLN modulation given and its closing residual deferred into
the next block (fast.block_forward's carry, the same maths; tests/test_fast_lightningdit.py compares the two), for
every upstream switch: RMSNorm or LayerNorm, RoPE or not, SwiGLU or the GELU MLP, qk-norm, no adaLN shift
(wo_shift). What the compiler fuses, compiled (regional: one block's kernels shared by all 28 XL blocks):
- the previous block's deferred residual add, RMSNorm (float32 statistics, cast back, times its weight) and the
  modulation x (1 + scale) + shift: one kernel that reads the hidden state once;
- RoPE: applied to q and k together (one element-wise op over both, in float32) right after the qkv product, so it
  sits in the kernel that lays qkv out into heads for the fused attention (scaled_dot_product_attention; head width 72
  on XL);
- SwiGLU: silu(a) * b over w12's output in one kernel (its 2 x 3072-wide activation read once, written 3072 wide),
  then w3. cuBLAS has no SwiGLU epilogue (as it has for GELU, fused_ops.linear_gelu), so the products stay two.
The RoPE tables stay float32 in the bf16 copy (fast_conditioning.network_for casts parameters, not buffers): bf16
would round cos and sin by up to 0.4%.

Time convention: the network runs in upstream's time s = 1 - t and returns upstream's velocity, -v in ours
(LightningDiT.forward converts at the model's edge). The fast path converts once per run instead of per step: the
precomputed modulation embeds 1 - t (network_time), and the plan's velocity coefficients take VELOCITY_SIGN.
FP8 products are not offered here: their error was measured on SiT only (fp8.py), and LightningDiT's MLP has other
layers (w12, w3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused_ops import linear_gelu
from ..models.lightningdit import LightningDiT, SwiGLU, rotate_pairs

VELOCITY_SIGN = -1.0  # the network's output is upstream's velocity: v_ours = -v_upstream


def supports(model) -> bool:
    return isinstance(model, LightningDiT)


def network_time(t: torch.Tensor) -> torch.Tensor:
    """The time the network embeds for our t: upstream's s = 1 - t, computed as LightningDiT.forward does (in the
    model's dtype, from t in that dtype), so the modulation is bit-for-bit the reference's."""
    return 1 - t


def rope_tables(net) -> tuple:
    """(cos, sin) for block_forward, or () when the network has no RoPE."""
    rope = net.feat_rope
    return () if rope is None else (rope.freqs_cos, rope.freqs_sin)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rope2d.forward (x cos + rotate_pairs(x) sin) in float32, cast back to x's dtype (a no-op cast in fp32)."""
    x32 = x.float()
    return (x32 * cos + rotate_pairs(x32) * sin).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift; without a shift (wo_shift) the reference adds zeros, which changes nothing."""
    out = x * (1 + scale.unsqueeze(1))
    return out if shift is None else out + shift.unsqueeze(1)


def attention(attn, x: torch.Tensor, cos=None, sin=None) -> torch.Tensor:
    """lightningdit.Attention.forward, with q and k normed and rotated as one tensor."""
    n, tokens, dim = x.shape
    qkv = attn.qkv(x).reshape(n, tokens, 3, attn.heads, dim // attn.heads).permute(2, 0, 3, 1, 4)
    qk, v = qkv[:2], qkv[2]
    if attn.q_norm is not None:
        qk = torch.stack([attn.q_norm(qk[0]), attn.k_norm(qk[1])])
    if cos is not None:
        qk = rope(qk, cos, sin)
    out = F.scaled_dot_product_attention(qk[0], qk[1], v)
    return attn.proj(out.transpose(1, 2).reshape(n, tokens, dim))


def mlp(module, y: torch.Tensor, fused_gelu: bool) -> torch.Tensor:
    """SwiGLU (w3(silu(a) * b), (a, b) the halves of w12(y)) or the GELU MLP (fc1 + GELU fused as in SiT's step)."""
    if isinstance(module, SwiGLU):
        a, b = module.w12(y).chunk(2, dim=-1)
        return module.w3(F.silu(a) * b)
    fc1 = module.fc1
    hidden = linear_gelu(y, fc1.weight, fc1.bias) if fused_gelu else F.gelu(fc1(y), approximate="tanh")
    return module.fc2(hidden)


def block_forward(block, h: torch.Tensor, mod: torch.Tensor, carry: tuple, options, cos=None, sin=None) -> tuple:
    """lightningdit.Block.forward with its modulation `mod` given and its closing residual deferred: returns (h, carry)
    where the block's output is h + carry[0] * carry[1]; the previous block's carry is added first (fast.block_forward's
    scheme). cos and sin: the RoPE tables (rope_tables), absent without RoPE. options: a FastOptions (fused_gelu)."""
    gate_prev, out_prev = carry
    h = h + gate_prev.unsqueeze(1) * out_prev
    if block.wo_shift:
        (scale_a, gate_a, scale_m, gate_m), shift_a, shift_m = mod.chunk(4, dim=-1), None, None
    else:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
    h = h + gate_a.unsqueeze(1) * attention(block.attn, modulate(block.norm1(h), shift_a, scale_a), cos, sin)
    return h, (gate_m, mlp(block.mlp, modulate(block.norm2(h), shift_m, scale_m), options.fused_gelu))
