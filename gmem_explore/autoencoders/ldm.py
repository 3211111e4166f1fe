"""The LDM-style KL autoencoder networks (the architecture of VA-VAE, SD's first VAE and VQGAN-KL), written with the
names of their checkpoints: `encoder.*`, `quant_conv`, `post_quant_conv`, `decoder.*` as in LDM's AutoencoderKL.

Layout, from the top of the decoder: conv_in; mid = ResnetBlock, AttnBlock, ResnetBlock; up[i] for i from the last
level to 0, each num_res_blocks + 1 ResnetBlocks (an AttnBlock after each at the resolutions in attn_resolutions,
counted from `resolution` / 2^(levels - 1)), then a nearest x2 upsample and a 3x3 conv except at level 0; GroupNorm
(32 groups, eps 1e-6), swish, conv_out. The encoder mirrors it (num_res_blocks per level, stride-2 convs with
(0, 1, 0, 1) padding) and ends in 2 * z_channels moments (mean, log-variance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LDMConfig:
    """ddconfig of the autoencoder; the defaults are VA-VAE f16d32 (tokenizer/configs/vavae_f16d32.yaml)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 32
    resolution: int = 256  # the nominal image side that attn_resolutions count from
    in_channels: int = 3
    out_ch: int = 3

    def __post_init__(self):
        widths = [self.ch * m for m in self.ch_mult]
        if any(w % 32 for w in widths):
            raise ValueError(f"LDM widths ch * ch_mult = {widths} must be multiples of 32 (GroupNorm's 32 groups)")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def group_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions with 1x1-conv projections, scale channels^-0.5."""

    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution: `block` (ResnetBlocks), `attn` (AttnBlocks, maybe none), then `upsample`/`downsample`."""

    def __init__(self, cin, cout, count, attention):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(count))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(count) if attention)

    def run(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Middle(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Decoder(nn.Module):
    def __init__(self, c: LDMConfig):
        super().__init__()
        levels = len(c.ch_mult)
        width = c.ch * c.ch_mult[-1]
        res = c.resolution // c.factor
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = Middle(width)
        up = [None] * levels
        for i in reversed(range(levels)):
            out = c.ch * c.ch_mult[i]
            up[i] = Level(width, out, c.num_res_blocks + 1, res in c.attn_resolutions)
            width = out
            if i != 0:
                up[i].upsample = Upsample(width)
                res *= 2
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, c.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i].run(h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(nn.Module):
    def __init__(self, c: LDMConfig):
        super().__init__()
        levels = len(c.ch_mult)
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        width, res = c.ch, c.resolution
        self.down = nn.ModuleList()
        for i in range(levels):
            out = c.ch * c.ch_mult[i]
            level = Level(width, out, c.num_res_blocks, res in c.attn_resolutions)
            width = out
            if i != levels - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = Middle(width)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * c.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level.run(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class KLAutoencoder(nn.Module):
    """LDM's AutoencoderKL without its losses: `decoder` and `post_quant_conv` always, `encoder` and `quant_conv`
    only when asked (a decode-only checkpoint has no encoder)."""

    def __init__(self, config: LDMConfig, with_encoder: bool = True):
        super().__init__()
        self.config = config
        z = config.z_channels
        if with_encoder:
            self.encoder = Encoder(config)
            self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)
        self.decoder = Decoder(config)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance clamped to [-30, 20]) of the posterior, as LDM's DiagonalGaussianDistribution."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))
