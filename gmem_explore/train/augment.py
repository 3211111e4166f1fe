"""Augmentations of the training target that teach the generator variation: the image it learns to draw for a
snippet is shifted, scaled and tinted a little, while the snippet stays that of the emoji. The network then learns
that one condition has many renderings, and the noise picks one at sampling time (GMem's behaviour: the snippet
fixes the content, the noise the rendering); without it, a model trained on one image per row reproduces that
image whatever the seed.

The random parameters are drawn by `draw(n, generator)` for the trainer's whole global batch from its own
generator (exact resume, any number of processes trains like one); `__call__(x, params)` applies them on the
device. Pixels are in [-1, 1] on a white background (1): shifts and zooms pad with white, and the tint scales
each channel's distance from white, so the background stays white.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageAugment:
    shift: float = 0.06  # largest shift, as a fraction of the side (0.06 of 64 px: about 4 px)
    scale: float = 0.08  # zoom factor drawn in [1 - scale, 1 + scale]
    tint: float = 0.08  # per-channel gain on the distance from white, in [1 - tint, 1 + tint]
    flip: float = 0.0  # probability of a horizontal flip (off by default: emoji text and arrows have a side)

    def __post_init__(self):
        values = {"shift": (self.shift, 0.5), "scale": (self.scale, 0.5), "tint": (self.tint, 1.0), "flip": (self.flip, 1.0)}
        bad = [f"{k}={v!r}" for k, (v, top) in values.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top or not math.isfinite(v)]
        if bad:
            raise ValueError(f"ImageAugment needs shift and scale in [0, 0.5], tint and flip in [0, 1]; got {', '.join(bad)}")

    def config_dict(self) -> dict:
        return asdict(self)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 7): dx, dy, zoom, three channel gains, flip (1 or 0)."""
        u = torch.rand(n, 7, generator=generator) * 2 - 1  # one draw of fixed size, whatever the settings
        return torch.stack([u[:, 0] * self.shift * 2, u[:, 1] * self.shift * 2, 1 + u[:, 2] * self.scale,
                            1 + u[:, 3] * self.tint, 1 + u[:, 4] * self.tint, 1 + u[:, 5] * self.tint,
                            ((u[:, 6] + 1) / 2 < self.flip).float()], dim=1)

    def __call__(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [-1, 1], params from draw (this batch's rows)."""
        p = params.to(x.dtype)
        n = len(x)
        sign = 1 - 2 * p[:, 6]  # -1 flips: the sampling grid's x axis runs the other way
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = sign / p[:, 2]
        theta[:, 1, 1] = 1 / p[:, 2]
        theta[:, 0, 2] = p[:, 0]  # grid units: the side is 2, so shift * 2 is shift of the side
        theta[:, 1, 2] = p[:, 1]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
        gains = p[:, 3:6, None, None]
        return (1 - (1 - moved) * gains).clamp(-1, 1)
