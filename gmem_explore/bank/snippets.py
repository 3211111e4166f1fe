"""Snippets as the model sees them: L2-normalised float32 rows (normalize), and mixes of two snippets (mix: lerp,
slerp, concat, mask) that stay on the unit sphere.

Apart from memory.py, which holds the MemoryBank itself; both names are importable from gmem_explore.bank.memory and
from gmem_explore as before. This module must not import memory.py (memory.py imports it).
"""
from __future__ import annotations

import torch

from .checks import refuse_meta
from ..values import as_whole

MIX_METHODS = ("lerp", "slerp", "concat", "mask")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows in float32; a zero row stays zero instead of becoming NaN. Rows shorter than 1e-12 count
    as zero too: dividing them by the clamp would give a short non-unit vector, and normalising twice would
    then change it again (found by tests/test_properties.py)."""
    x = torch.as_tensor(x).float()
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm <= 1e-12, torch.zeros_like(x), x / norm.clamp_min(1e-12))  # NaN rows stay NaN


def mix(a: torch.Tensor, b: torch.Tensor, weight: float, method: str = "slerp", seed: int = 0) -> torch.Tensor:
    """Mix two snippets (or two batches of them); weight 0 gives a, 1 gives b; the result has unit norm.

    lerp: straight line; slerp: great circle; concat: the first (1 - weight) of the dimensions from a and the
    rest from b (weight 0.5 is the v2 code's half-and-half); mask: each dimension from b with probability
    `weight`, by a seeded random mask.
    """
    if method not in MIX_METHODS:
        raise ValueError(f"Unknown mixing method {method!r}; choose one of {MIX_METHODS}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must lie in [0, 1]; got {weight}")
    if method == "mask" and as_whole(seed) is None:
        raise ValueError(f"seed (for the 'mask' mix) must be an integer; got {seed!r}")
    refuse_meta(a, "snippets to mix"), refuse_meta(b, "snippets to mix")
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"snippets to mix are vectors (D,) or batches (N, D), not numbers; got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)} (for bank rows: bank.snippets([row]))")
    for name, x in (("first", a), ("second", b)):  # NaN would pass the zero-norm check below and come out as NaN
        if not torch.isfinite(x).all():
            raise ValueError(f"the {name} snippet to mix holds NaN or infinite values; use a bank row or an encoded "
                             f"image instead")
    a, b = normalize(a), normalize(b)
    if a.shape != b.shape:
        raise ValueError(f"snippets to mix must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    w = float(weight)
    if method == "lerp":
        out = (1 - w) * a + w * b
    elif method == "slerp":
        cos = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        omega = torch.arccos(cos)
        sin = torch.sin(omega)
        near = sin.abs() < 1e-6  # parallel vectors: slerp degenerates to lerp
        safe = torch.where(near, torch.ones_like(sin), sin)
        out = torch.where(near, (1 - w) * a + w * b,
                          (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / safe)
    elif method == "concat":
        split = round((1 - w) * a.shape[-1])
        out = torch.cat([a[..., :split], b[..., split:]], dim=-1)
    else:
        g = torch.Generator().manual_seed(int(seed))
        take_b = torch.rand(a.shape[-1], generator=g) < w
        out = torch.where(take_b, b, a)
    if bool((out.norm(dim=-1) < 1e-6).any()):  # e.g. lerp / slerp of opposite snippets at weight 0.5
        why = ("they point in opposite directions" if method in ("lerp", "slerp")
               else "every dimension it takes is zero in its snippet")
        raise ValueError(f"Mixing these snippets by {method} at weight {w} gives the zero vector ({why}), which has "
                         "no direction to condition on; use another weight or the 'concat' or 'mask' method")
    return normalize(out)
