"""SiT backbone conditioned on memory snippets: the GMem v1 network.

Parameter names and shapes follow the released v1 `network` state_dict exactly (timm PatchEmbed /
Attention / Mlp layout), so `load_state_dict(..., strict=True)` works on the official checkpoint.

Call convention, shared by every model in the project:
    model(x, t, snippet) -> velocity
with x (N, C, H, W), t (N,) in [0, 1] where t = 1 is pure noise, snippet (N, snippet_dim).
The REPA projector output (used only by the training loss) comes from `model.forward_with_projection`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..values import as_whole

# depth, hidden size, heads: the SiT / DiT size table.
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; stored beside its weights as JSON."""

    input_size: int = 32  # latent (or pixel) side length
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    snippet_dim: int = 768
    encoder_depth: int = 8  # the REPA projector reads the tokens after this block
    projector_dim: int = 2048
    repa_dim: int = 768  # width of the features the projector is aligned to
    condition_dropout: float = 0.2  # v1 applies dropout after the snippet projection in training only

    def __post_init__(self):
        sizes = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "snippet_dim",
                 "encoder_depth", "projector_dim", "repa_dim")
        wrong = [f"{k}={getattr(self, k)!r}" for k in sizes if as_whole(getattr(self, k), 1) is None]
        if wrong:  # 0 would divide by zero below, a float fails deep in torch
            raise ValueError(f"Invalid model config: {', '.join(wrong)}; sizes must be positive integers")
        for k in sizes:  # NumPy integers as plain ints, so the config saves as JSON
            object.__setattr__(self, k, int(getattr(self, k)))
        if not 0 < self.mlp_ratio < math.inf or not 0 <= self.condition_dropout <= 1:
            raise ValueError(f"Invalid model config: mlp_ratio must be > 0 (got {self.mlp_ratio}) and condition_dropout "
                             f"in [0, 1] (got {self.condition_dropout})")
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if (self.hidden_size // max(self.num_heads, 1)) % 2 or self.hidden_size % 4:
            problems.append("hidden_size must be a multiple of 4 (2-D sin-cos positions) with an even head width")
        if not 1 <= self.encoder_depth <= self.depth:
            problems.append(f"encoder_depth {self.encoder_depth} must lie in [1, depth={self.depth}]")
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown model config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2


def model_config(name: str | None = None, **overrides) -> ModelConfig:
    """Config for a named size ("SiT-XL/2") and/or explicit keywords; keywords win. Without an explicit
    encoder_depth, a network shallower than the default 8 blocks takes its REPA projector after its last block."""
    base = ModelConfig()
    if name is not None:
        try:
            size, patch = name.removeprefix("SiT-").split("/")
            depth, hidden, heads = SIZES[size]
            patch = int(patch)
            if patch not in PATCHES:
                raise KeyError(patch)
        except (ValueError, KeyError):
            names = [f"SiT-{s}/{p}" for s in SIZES for p in PATCHES]
            raise ValueError(f"Unknown model name {name!r}; choose one of {names} or pass sizes as keywords") from None
        base = replace(base, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    merged = {**base.to_dict(), **overrides}
    if "encoder_depth" not in overrides:  # the REPA tap (block 8) of a network shallower than 8: its last block
        merged["encoder_depth"] = min(merged["encoder_depth"], merged["depth"])
    return ModelConfig.from_dict(merged)


def build_model(name: str | None = None, **overrides) -> "GMemSiT":
    """`build_model("SiT-XL/2")` or `build_model(input_size=8, patch_size=2, hidden_size=64, depth=2, ...)`."""
    return GMemSiT(model_config(name, **overrides))


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (cos half first, then sin), as in GLIDE / DiT / SiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE layout: first half encodes the row... of meshgrid(w, h))."""

    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # numpy meshgrid(w, h) order
    emb = torch.cat([one_axis(dim // 2, grid_w), one_axis(dim // 2, grid_h)], dim=1)
    return emb.float()


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_ch, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_frequencies(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class SnippetEmbedder(nn.Module):
    """`condition_projection` in v1: Linear(snippet_dim, D), dropout only in training."""

    def __init__(self, snippet_dim, dim, dropout):
        super().__init__()
        self.linear = nn.Linear(snippet_dim, dim)
        self.dropout = nn.Dropout(dropout)
        # Training only: a dropout mask given from outside (the trainer draws it for the whole global batch, so that
        # the result does not depend on how many processes share the batch). None: nn.Dropout draws its own.
        self.mask = None

    @property
    def mask_features(self) -> int:
        """The width of `mask`: v1 drops after the Linear, so its output width."""
        return self.linear.out_features

    def forward(self, snippet):
        out = self.linear(snippet)
        if self.training and self.mask is not None:
            return out * self.mask.to(out.dtype)
        return self.dropout(out)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # Fused attention: same maths as the unfused timm path, far less memory traffic.
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(N, tokens, p * p * C) patch outputs -> (N, C, H, W) images, tokens in row-major order (every backbone here)."""
    n, tokens, _ = x.shape
    p, ch = patch_size, channels
    side = int(math.isqrt(tokens))
    x = x.reshape(n, side, side, p, p, ch).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, ch, side * p, side * p)


def check_inputs(config, x, t, snippet) -> None:
    """The shapes model(x, t, snippet) takes, for any config with in_channels, input_size and snippet_dim."""
    c = config
    want = (c.in_channels, c.input_size, c.input_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise ValueError(f"x must have shape (N, {want[0]}, {want[1]}, {want[2]}); got {tuple(x.shape)}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape ({x.shape[0]},) with values in [0, 1]; got {tuple(t.shape)}")
    if snippet.ndim != 2 or snippet.shape != (x.shape[0], c.snippet_dim):
        raise ValueError(
            f"snippet must have shape ({x.shape[0]}, {c.snippet_dim}); got {tuple(snippet.shape)}. "
            f"Snippets come from the memory bank or the encoder this model was trained with."
        )


def projector(dim, hidden, out):
    return nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out))


class GMemSiT(nn.Module):
    """SiT whose conditioning vector is t-embedding + Linear(snippet); no label embedder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.condition_projection = SnippetEmbedder(c.snippet_dim, c.hidden_size, c.condition_dropout)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(SiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.projectors = nn.ModuleList([projector(c.hidden_size, c.projector_dim, c.repa_dim)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.in_channels)
        if not any(p.is_meta for p in self.parameters()):
            self.initialize_weights()

    def initialize_weights(self):
        """SiT's init: xavier linears, zeroed adaLN and output, so a fresh model predicts zero velocity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        grid = self.config.input_size // self.config.patch_size
        self.pos_embed.data.copy_(sincos_2d(self.config.hidden_size, grid).unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x):
        return unpatchify(x, self.config.patch_size, self.config.in_channels)

    def check_inputs(self, x, t, snippet):
        check_inputs(self.config, x, t, snippet)

    def forward_with_projection(self, x, t, snippet):
        """(velocity, projector output at block `encoder_depth`): the training path for REPA."""
        return self._forward(x, t, snippet, want_projection=True)

    def forward(self, x, t, snippet):
        return self._forward(x, t, snippet, want_projection=False)[0]

    def _forward(self, x, t, snippet, want_projection):
        self.check_inputs(x, t, snippet)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.condition_projection(snippet.to(h.dtype))
        projected = None
        for i, block in enumerate(self.blocks):
            h = block(h, c)
            if want_projection and i + 1 == self.config.encoder_depth:
                projected = self.projectors[0](h)
        return self.unpatchify(self.final_layer(h, c)), projected


def load_network_state(model: nn.Module, state: dict) -> None:
    """load_state_dict(strict=True) with an error that names missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def short(items):
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {short(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches: {short(wrong)}")
        raise ValueError(
            "The checkpoint does not match this model (" + "; ".join(parts) + "). "
            "Check that the model size/patch/input size match the checkpoint's config."
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"The checkpoint holds NaN or infinite weights in {bad[:5]}; the file is corrupt or diverged.")
    model.load_state_dict(state, strict=True)
