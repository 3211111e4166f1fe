"""VA-VAE f16d32 (hustvl, vision-foundation-aligned VAE): GMem v2's autoencoder, 32 x 16 x 16 latents at 256 px.

Files, as upstream ships them:
- `vavae-imagenet256-f16d32-dinov2.pt`: {"state_dict": {...}} with LDM names (`encoder.*`, `quant_conv.*`,
  `post_quant_conv.*`, `decoder.*`) beside the training-only `loss.*`, `foundation_model.*` and `linear_proj.*`,
  which are ignored. Read with torch.load(weights_only=True): tensors only, never code.
- `latents_stats.pt`: {"mean", "std"}, one value per latent channel ((1, 32, 1, 1) in upstream's file).

Model space is the normalised latent the diffusion model sees: (z - mean) / std * multiplier (multiplier 1.0 in
GMem v2's configs). Decoding is upstream's exactly (engine/evaluation.py, tokenizer/vavae.py):
latents * std / multiplier + mean -> post_quant_conv -> decoder -> clamp(127.5 x + 128, 0, 255) -> uint8, a cast
that truncates (so 127.5 x + 128 truncated is 127.5 (x + 1) rounded to the nearest level).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .ldm import KLAutoencoder, LDMConfig
from .pixels import from_uint8

DECODER_PREFIXES = ("decoder.", "post_quant_conv.")
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def read_tensors(path, what: str):
    """torch.load with weights_only=True and an error that says what went wrong with which file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds Python objects beyond tensors and is not loaded (weights_only=True refuses "
                         f"code in a pickle). Use the file as released, or re-save its tensors only: {e}") from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable torch file (truncated or damaged?): download or copy it again. "
                         f"({e})") from e


def checkpoint_state(obj, path) -> dict:
    """The state_dict of a VA-VAE file: {"state_dict": ...} as released, or a bare dict of tensors."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"{path} is not a VA-VAE checkpoint: expected {{'state_dict': {{name: tensor}}}} with LDM "
                         f"names (decoder.*, post_quant_conv.*)")
    return state


def part_mismatch(own: dict, given: dict) -> str:
    """'' when `given` has exactly `own`'s keys and shapes; else what is missing, unexpected or mis-shaped."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong = [f"{k} {tuple(given[k].shape)} != {tuple(own[k].shape)}" for k in sorted(set(own) & set(given))
             if given[k].shape != own[k].shape]

    def first(items):
        return ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")

    parts = [f"{label} ({len(items)}): {first(items)}" for label, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if items]
    return "; ".join(parts)


def read_stats(path, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std), each (1, channels, 1, 1) float32, from latents_stats.pt."""
    obj = read_tensors(path, "Latent statistics")
    if not isinstance(obj, dict) or not {"mean", "std"} <= set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not a latents_stats.pt: expected {{'mean', 'std'}}; found {found}")
    out = []
    for key in ("mean", "std"):
        v = obj[key]
        if not torch.is_tensor(v) or v.numel() != channels:
            shape = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{path}: '{key}' must hold one value per latent channel ({channels}, e.g. shape "
                             f"(1, {channels}, 1, 1)); got {shape}")
        out.append(v.detach().float().reshape(1, channels, 1, 1))
    mean, std = out
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"{path}: mean must be finite and std finite and positive")
    return mean, std


def checked_parts(checkpoint, config: LDMConfig | None = None) -> tuple[dict, dict]:
    """(decoder tensors, encoder tensors) of a VA-VAE file, each checked key by key against the architecture of
    `config` (f16d32's by default): a ValueError names the first missing, unexpected or mis-shaped keys. The encoder
    part may be empty (a decoder-only file)."""
    config = config or LDMConfig()
    state = checkpoint_state(read_tensors(checkpoint, "VA-VAE checkpoint"), checkpoint)
    decoder_part = {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    encoder_part = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    with torch.device("meta"):  # shapes only: the real weights come from the file
        skeleton = KLAutoencoder(config, with_encoder=bool(encoder_part)).state_dict()
    for label, part, prefixes in (("decoder", decoder_part, DECODER_PREFIXES),
                                  ("encoder", encoder_part, ENCODER_PREFIXES)):
        if label == "encoder" and not part:
            continue
        problems = part_mismatch({k: v for k, v in skeleton.items() if k.startswith(prefixes)}, part)
        if problems:
            raise ValueError(f"{checkpoint} does not hold a VA-VAE {label} of this architecture "
                             f"(ch {config.ch}, ch_mult {config.ch_mult}, z {config.z_channels}): {problems}")
    return decoder_part, encoder_part


def check_files(checkpoint, stats, config: LDMConfig | None = None) -> None:
    """The checks VAVAE(checkpoint, stats) makes, without building the autoencoder (a converter's early check)."""
    config = config or LDMConfig()
    checked_parts(checkpoint, config)
    read_stats(stats, config.z_channels)


class VAVAE:
    """VA-VAE f16d32 from hustvl's checkpoint and latent statistics; decode(latents) -> uint8 (N, H, W, 3).

    `encode` needs the encoder's weights (in the released file); a decoder-only file decodes and refuses encode.
    `config` changes the architecture (tests use a tiny one); the default is f16d32's."""

    name = "va-vae"

    def __init__(self, checkpoint, stats, image_size: int = 256, device="cpu", dtype=torch.float32,
                 multiplier: float = 1.0, config: LDMConfig | None = None):
        self.config = config = config or LDMConfig()
        if image_size % config.factor:
            raise ValueError(f"image_size {image_size} must be a multiple of the VAE's factor {config.factor}")
        if not multiplier > 0:
            raise ValueError(f"multiplier must be positive; got {multiplier}")
        decoder_part, encoder_part = checked_parts(checkpoint, config)
        model = KLAutoencoder(config, with_encoder=bool(encoder_part))
        model.load_state_dict({**decoder_part, **encoder_part}, strict=True)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.has_encoder = bool(encoder_part)
        self.mean, self.std = (s.to(device) for s in read_stats(stats, config.z_channels))
        self.multiplier = float(multiplier)
        self.image_size = image_size

    @property
    def device(self) -> torch.device:
        return self.model.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.post_quant_conv.weight.dtype

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.config.factor
        return (self.config.z_channels, side, side)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, 32, h, w) -> uint8 images (N, 16 h, 16 w, 3) on the CPU, as upstream writes them."""
        if latents.ndim != 4 or latents.shape[1] != self.config.z_channels:
            raise ValueError(f"latents must have shape (N, {self.config.z_channels}, h, w); got {tuple(latents.shape)}")
        z = latents.to(self.device, torch.float32) * self.std / self.multiplier + self.mean
        x = self.model.decode(z.to(self.dtype)).float()
        return (127.5 * x + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images (N, H, W, 3) -> normalised latents: a posterior sample (as upstream's extract_features),
        (z - mean) / std * multiplier. `generator` (on the VAE's device) fixes the sample."""
        if not self.has_encoder:
            raise ValueError("This VA-VAE checkpoint holds no encoder weights (encoder.*, quant_conv.*): it can decode "
                             "but not encode. Use the released vavae-imagenet256-f16d32-dinov2.pt.")
        x = from_uint8(images).to(self.device, self.dtype)
        mean, logvar = self.model.moments(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        z = mean.float() + torch.exp(0.5 * logvar.float()) * noise
        return (z - self.mean) / self.std * self.multiplier
