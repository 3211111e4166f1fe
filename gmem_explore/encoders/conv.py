"""Snippet encoders: images -> D-dimensional feature vectors ("snippets") that fill a GMem memory bank.

Every encoder offers the same small interface (the pipeline, bank builder and trainer only use this):
    encoder.dim                    int, the snippet dimension (768 as in GMem)
    encoder.encode(images)         float32 (N, dim); images uint8 (N, H, W, 3) of any size or a list of PIL images
    encoder.config_dict()          JSON-able dict with a "type" key
    encoder.state_dict()           dict of tensors (saved as encoder.safetensors)
and `encoder_from_config(cfg, state)` rebuilds one from a checkpoint folder.

The built-in ConvEncoder is a small CNN (1.1M parameters, 32x32 input) trained by `train_conv_encoder` on two
objectives at once: classify the emoji's group (semantics, so neighbours in the bank share a group), and
reconstruct the image from the 768-d code through a linear decoder that is thrown away afterwards (instance
detail, so the generator conditioned on a snippet can draw that very image). Augmented views (shifts of up to
2 pixels, flips) keep the code stable under small changes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..autoencoders import from_uint8
from ..values import as_whole
from ..images import as_uint8_batch
from .dinov2 import DINOv2Encoder


def encoder_from_config(cfg: dict, state: dict):
    """Rebuild a snippet encoder from its config_dict() and state_dict()."""
    kind = cfg.get("type")
    if kind == "conv":
        return ConvEncoder.from_config(cfg, state)
    if kind == "dinov2":
        return DINOv2Encoder.from_config(cfg, state)
    raise ValueError(f"Unknown snippet encoder type {kind!r}; known types: 'conv', 'dinov2'")


def to_model_input(images, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) tensor / array or a list of PIL images / arrays -> floats (N, 3, size, size) in [-1, 1]."""

    x = from_uint8(as_uint8_batch(images, size))
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def conv_stage(cin: int, cout: int) -> nn.Sequential:
    """Halve the resolution, then one more 3x3 conv; GroupNorm so eval equals train (no batch statistics)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class ConvEncoder(nn.Module):
    """32x32 RGB -> 3 stride-2 stages (32, 64, 128 channels) -> 4x4x64 -> Linear -> dim (1.1M parameters at dim 768).

    Flattening the 4x4 map (instead of average pooling) keeps where things are, which the generator needs."""

    def __init__(self, dim: int = 768, image_size: int = 32, widths=(32, 64, 128), head_channels: int = 64):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8; got {image_size}")
        self.dim, self.image_size = dim, image_size
        self.widths, self.head_channels = tuple(widths), head_channels
        stages, cin = [], 3
        for w in widths:
            stages.append(conv_stage(cin, w))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.reduce = nn.Conv2d(cin, head_channels, 1)
        side = image_size // 2 ** len(widths)
        self.head = nn.Linear(head_channels * side * side, dim)

    @classmethod
    def from_config(cls, cfg: dict, state: dict) -> "ConvEncoder":
        missing = [k for k in ("dim", "image_size", "widths", "head_channels") if k not in cfg]
        if missing:  # was a bare KeyError: 'widths'
            raise ValueError(f"the snippet encoder's config lacks {missing} (config.json's \"encoder\" entry is "
                             f"damaged or was written by another tool); copy or save the checkpoint again")
        enc = cls(dim=cfg["dim"], image_size=cfg["image_size"], widths=cfg["widths"], head_channels=cfg["head_channels"])
        missing, unexpected = enc.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"encoder weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return enc.eval().requires_grad_(False)

    def config_dict(self) -> dict:
        return {"type": "conv", "dim": self.dim, "image_size": self.image_size, "widths": list(self.widths),
                "head_channels": self.head_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] floats (N, 3, S, S) -> (N, dim) features (not normalised)."""
        return self.head(self.reduce(self.stages(x)).flatten(1))

    @torch.no_grad()
    def encode(self, images, batch_size: int = 256) -> torch.Tensor:
        if as_whole(batch_size, 1) is None:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        batch_size = as_whole(batch_size)
        x = to_model_input(images, self.image_size)
        if not len(x):  # an empty batch has empty snippets (torch.cat of no chunks would fail)
            return torch.zeros(0, self.dim)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = torch.cat([self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out


class LinearDecoder(nn.Module):
    """Training-only: code -> image by one linear map (thrown away afterwards).

    A linear read-out forces the code itself to hold the image's layout and colours (like a PCA of the pixels
    inside the 768-d code), which is what lets the generator draw the very image a snippet came from. It costs
    a tenth of a convolutional decoder on the CPU."""

    def __init__(self, dim: int = 768, image_size: int = 32):
        super().__init__()
        self.image_size = image_size
        self.linear = nn.Linear(dim, 3 * image_size * image_size)

    def forward(self, z):
        return self.linear(z).view(-1, 3, self.image_size, self.image_size)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random shifts (white padding, as the emoji sit on white) and horizontal flips, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def encoder_optimizer(params, steps: int, lr: float):
    """AdamW (weight decay 0.05) with a linear warm-up over min(100, steps / 10) steps, then cosine decay to zero:
    the schedule of every snippet encoder trained here."""
    warmup = min(100, steps // 10 + 1)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return opt, sched


def train_conv_encoder(images: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 600,
                       batch_size: int = 64, lr: float = 2e-3, recon_weight: float = 1.0, dim: int = 768,
                       seed: int = 0, progress: bool = True, log_every: int = 100) -> tuple[ConvEncoder, list[dict]]:
    """Train a ConvEncoder on uint8 images (N, S, S, 3) and integer labels; returns (frozen encoder, log).

    Loss = cross-entropy of a linear group head on the code + recon_weight x MSE of the decoder's image
    (pixels in [-1, 1]). AdamW with a cosine schedule. About 0.2 s per step at batch 64 on 2 busy CPU cores."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    size = images.shape[1]
    x_all = from_uint8(images)
    labels = torch.as_tensor(labels).long()
    encoder = ConvEncoder(dim=dim, image_size=size)
    decoder = LinearDecoder(dim=dim, image_size=size)
    classifier = nn.Linear(dim, num_classes)
    params = [*encoder.parameters(), *decoder.parameters(), *classifier.parameters()]
    opt, sched = encoder_optimizer(params, steps, lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="training encoder", unit="step")
    log = []
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=g)
        x = augment(x_all[idx], g)
        z = encoder(x)
        ce = F.cross_entropy(classifier(z), labels[idx])
        recon = F.mse_loss(decoder(z), x)
        loss = ce + recon_weight * recon
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ce=f"{ce.item():.3f}", recon=f"{recon.item():.4f}")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.append({"step": step + 1, "ce": ce.item(), "recon": recon.item()})
    if bar is not None:
        bar.close()
    return encoder.eval().requires_grad_(False), log
