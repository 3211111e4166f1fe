"""Pictures: image grids and strips (PIL), for the README, the app and the notebooks."""
from __future__ import annotations

import math

import torch
from PIL import Image

from .values import as_whole


def check_scale(scale) -> int:
    """A whole upscaling factor >= 1: PIL's error for 0 ('height and width must be > 0') names no argument."""
    if as_whole(scale, 1) is None:
        raise ValueError(f"scale is a whole upscaling factor >= 1 (nearest neighbour; 1 keeps the size); got {scale!r}")
    return as_whole(scale)


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1,
               background: int = 255) -> Image.Image:
    """uint8 (N, H, W, 3) -> one PIL image, `nrow` images per row, optionally upscaled (nearest)."""
    scale = check_scale(scale)
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"image_grid needs uint8 (N, H, W, 3); got {tuple(images.shape)} {images.dtype}")
    n, h, w, _ = images.shape
    if nrow is not None and as_whole(nrow, 0) is None:
        raise ValueError(f"nrow is the number of images per row (a whole number; 0 or None: about sqrt(N)); got {nrow!r}")
    nrow = int(nrow or max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / nrow)
    canvas = torch.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), background, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    img = Image.fromarray(canvas.numpy())
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def to_pil(images: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    scale = check_scale(scale)
    out = [Image.fromarray(im.numpy()) for im in torch.as_tensor(images)]
    if scale != 1:
        out = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in out]
    return out
