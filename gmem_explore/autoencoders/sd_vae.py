"""Stable Diffusion's VAE (f8, 4 channels) through diffusers (an optional extra), latents scaled by 0.18215 as
in GMem v1; decoded images are truncated to uint8 as the released generate.py does."""
from __future__ import annotations

import os

import torch

from ..offline import cache_only
from .pixels import from_uint8, released_uint8

SD_VAE_SCALE = 0.18215  # the latent scale of the SD VAE used by DiT / SiT / GMem v1
SD_VAE_REPO = "stabilityai/sd-vae-ft-mse"
SD_VAE_ENV = "GMEM_SD_VAE"  # a local folder used instead of SD_VAE_REPO


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
