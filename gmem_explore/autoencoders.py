"""Autoencoders behind one small interface: encode images to model space, decode back, and the latent shape.

Images are uint8 tensors (N, H, W, 3) everywhere in the project. Model space is (N, C, h, w) float.
- PixelSpace: identity up to scaling, pixels in [-1, 1] (the embedded Twemoji model works here).
- SDVAE: Stable Diffusion's VAE through diffusers (optional extra), latents scaled by 0.18215 as in GMem v1.
"""
from __future__ import annotations

import os

import torch

SD_VAE_SCALE = 0.18215  # the latent scale of the SD VAE used by DiT / SiT / GMem v1
SD_VAE_REPO = "stabilityai/sd-vae-ft-mse"
SD_VAE_ENV = "GMEM_SD_VAE"  # a local folder used instead of SD_VAE_REPO


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


class SDVAE:
    """SD-VAE (f8, 4 channels) via diffusers' AutoencoderKL; `source` is a hub id or a local folder."""

    name = "sd-vae"

    def __init__(self, image_size: int = 256, source: str = SD_VAE_REPO, device="cpu", dtype=torch.float32,
                 revision: str | None = None):
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:  # optional dependency
            raise ImportError("SD-VAE decoding needs diffusers: pip install 'gmem-explore[sd]'") from e
        if source == SD_VAE_REPO and os.environ.get(SD_VAE_ENV):
            source = os.environ[SD_VAE_ENV]  # a local copy, for machines without a network (CLI, app, notebooks)
        from .hub import cache_only

        offline = cache_only(source)
        try:
            self.vae = AutoencoderKL.from_pretrained(source, revision=revision, torch_dtype=dtype,
                                                     local_files_only=offline).to(device).eval()
        except OSError as e:
            raise OSError(
                f"Could not load the SD-VAE from {source!r}"
                f"{' (the Hugging Face Hub is unreachable or HF_HUB_OFFLINE is set, and it is not cached)' if offline else ''}"
                f": {e}\nWithout a network, download it once where one "
                f"exists (hf download {SD_VAE_REPO} --local-dir DIR), copy DIR here and set {SD_VAE_ENV}=DIR, or "
                f"set HF_HOME to a cache that holds it."
            ) from e
        self.image_size = image_size
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.channels = self.vae.config.latent_channels

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.factor
        return (self.channels, side, side)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        x = from_uint8(images).to(self.vae.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.sample() * SD_VAE_SCALE

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((latents / SD_VAE_SCALE).to(self.vae.device, self.vae.dtype)).sample
        return released_uint8(x)
