"""Autoencoders behind one small interface: encode(uint8 images) -> model space, decode(latents) -> uint8 images,
latent_shape() -> (C, h, w). Images are uint8 tensors (N, H, W, 3) everywhere in the project; model space is
(N, C, h, w) float. A new autoencoder is a module here with a class of that interface, named in __all__.

- PixelSpace (pixels.py): pixels in [-1, 1], for the embedded models.
- SDVAE (sd_vae.py): the SD-VAE of GMem v1 (diffusers).
- VAVAE (va_vae.py): the VA-VAE f16d32 of GMem v2, pure torch (its LDM networks in ldm.py).
"""
from .pixels import PixelSpace, from_uint8, released_uint8, to_uint8
from .sd_vae import SD_VAE_ENV, SD_VAE_REPO, SD_VAE_SCALE, SDVAE
from .va_vae import VAVAE

__all__ = ["PixelSpace", "SDVAE", "SD_VAE_ENV", "SD_VAE_REPO", "SD_VAE_SCALE", "VAVAE", "from_uint8", "released_uint8",
           "to_uint8"]
