"""Pixel space: images as model input and back (the embedded Twemoji models work here), and the uint8
conversions every autoencoder shares."""
from __future__ import annotations

import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (N, 3, H, W) -> uint8 (N, H, W, 3), rounded: the exact inverse of from_uint8 (pixel models)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def released_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (N, 3, H, W) -> uint8 (N, H, W, 3) as the released GMem sampler writes its FID images
    (engine/generate.py): clamp(255 * (x + 1) / 2, 0, 255) cast to uint8, which truncates. Rounding instead makes
    images half a level brighter on average, a small FID offset against the paper's numbers."""
    return (255 * ((x.float() + 1) / 2)).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> floats in [-1, 1] (N, 3, H, W)."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3); got shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1


class PixelSpace:
    """The identity autoencoder: the model works directly on RGB pixels in [-1, 1]."""

    name = "pixels"

    def __init__(self, image_size: int):
        self.image_size = image_size

    def latent_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return from_uint8(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8(latents)
