"""LightningDiT conditioned on memory snippets: the GMem v2 network (upstream LINs-lab/GMem models/lightningdit.py).

Parameter and buffer names and shapes are upstream's, so its files load with `load_state_dict(strict=True)`:
`x_embedder.proj`, `pos_embed`, `t_embedder.mlp.{0,2}`, `condition_projection.linear`, `feat_rope.freqs_{cos,sin}`
(persistent buffers, so they are in every upstream state_dict), `blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.w12,
mlp.w3,adaLN_modulation.1}`, `projector.0.{0,2,4}` (the REPA head, singular) and `final_layer.{norm_final,linear,
adaLN_modulation.1}`.

Switches as GMem v2 trains them (configs/gmem_sde_xl.yaml): SwiGLU, RMSNorm, 2-D RoPE on; qk-norm off; adaLN shift
kept (`wo_shift: false`). The other upstream settings are here too, with upstream's names for their weights.

Time convention. Every model in this project is called model(x, t, snippet) with t = 1 noise and t = 0 data and
returns d x_t / dt on x_t = (1 - t) x + t eps, that is eps - x. Upstream runs the other way: s = 0 noise, s = 1 data,
x_s = s x + (1 - s) eps, velocity x - eps. The same point is s = 1 - t, so at the model's edge, once:

    v_ours(x, t) = -v_upstream(x, 1 - t)

`forward_upstream` is the network in upstream's own convention (for parity checks against upstream code).
"""
from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..values import as_whole
from .sit import (PatchEmbed, TimestepEmbedder, check_inputs, load_network_state, modulate, projector, sincos_2d,
                  unpatchify)

# depth, hidden size, heads, patch: upstream's LightningDiT_models table.
NAMED = {
    "LightningDiT-S/1": (12, 384, 6, 1), "LightningDiT-B/1": (12, 768, 12, 1), "LightningDiT-B/2": (12, 768, 12, 2),
    "LightningDiT-L/2": (24, 1024, 16, 2), "LightningDiT-XL/1": (28, 1152, 16, 1),
    "LightningDiT-XL/2": (28, 1152, 16, 2), "LightningDiT-1p0B/1": (24, 1536, 24, 1),
    "LightningDiT-1p0B/2": (24, 1536, 24, 2), "LightningDiT-1p6B/1": (28, 1792, 28, 1),
    "LightningDiT-1p6B/2": (28, 1792, 28, 2),
}


@dataclass(frozen=True)
class LightningDiTConfig:
    """Everything needed to rebuild a LightningDiT; the defaults are GMem v2's XL/1 on VA-VAE f16d32 latents."""

    input_size: int = 16  # 256 px / VA-VAE's factor 16
    patch_size: int = 1
    in_channels: int = 32
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    snippet_dim: int = 768
    encoder_depth: int = 4  # upstream's REPA tap: the tokens after block 4
    projector_dim: int = 2048
    repa_dim: int = 768
    condition_dropout: float = 0.4  # element-wise on the snippet before its Linear, training only
    use_swiglu: bool = True
    use_rmsnorm: bool = True
    use_rope: bool = True
    use_qknorm: bool = False
    wo_shift: bool = False

    backbone = "lightningdit"  # not a field: tells a saved config's family (registry.config_from_dict)

    def __post_init__(self):
        sizes = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "snippet_dim",
                 "encoder_depth", "projector_dim", "repa_dim")
        wrong = [f"{k}={getattr(self, k)!r}" for k in sizes if (as_whole(getattr(self, k)) or 0) < 1]
        if wrong:
            raise ValueError(f"Invalid LightningDiT config: {', '.join(wrong)}; sizes must be positive integers")
        for k in sizes:  # NumPy integers as plain ints, so the config saves as JSON
            object.__setattr__(self, k, int(getattr(self, k)))
        switches = ("use_swiglu", "use_rmsnorm", "use_rope", "use_qknorm", "wo_shift")
        bad = [f"{k}={getattr(self, k)!r}" for k in switches if not isinstance(getattr(self, k), bool)]
        if bad:
            raise ValueError(f"Invalid LightningDiT config: {', '.join(bad)}; switches must be True or False")
        if not 0 < self.mlp_ratio < math.inf or not 0 <= self.condition_dropout <= 1:
            raise ValueError(f"Invalid LightningDiT config: mlp_ratio must be > 0 (got {self.mlp_ratio}) and "
                             f"condition_dropout in [0, 1] (got {self.condition_dropout})")
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        elif self.use_rope and (self.hidden_size // self.num_heads) % 4:
            # RoPE rotates pairs on two axes: each axis takes half the head, in pairs
            problems.append(f"2-D RoPE needs a head width (hidden_size / num_heads = "
                            f"{self.hidden_size // self.num_heads}) that is a multiple of 4")
        if self.hidden_size % 4:
            problems.append("hidden_size must be a multiple of 4 (2-D sin-cos positions)")
        if not 1 <= self.encoder_depth <= self.depth:
            problems.append(f"encoder_depth {self.encoder_depth} must lie in [1, depth={self.depth}]")
        if problems:
            raise ValueError("Invalid LightningDiT config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict) -> "LightningDiTConfig":
        d = {k: v for k, v in d.items() if k != "backbone"}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown LightningDiT config keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, **asdict(self)}

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def swiglu_hidden(self) -> int:
        """Upstream's SwiGLUFFN(hidden, int(2/3 * mlp_hidden)): 3072 for XL (two products of 3072 match GELU's 4608)."""
        return int(2 / 3 * int(self.hidden_size * self.mlp_ratio))


def lightningdit_config(name: str | None = None, **overrides) -> LightningDiTConfig:
    """Config for an upstream name ("LightningDiT-XL/1") and/or keywords; keywords win. Without an explicit
    encoder_depth, a network shallower than 4 blocks takes its REPA projector after its last block."""
    base = LightningDiTConfig()
    if name is not None:
        if name not in NAMED:
            raise ValueError(f"Unknown model name {name!r}; choose one of {list(NAMED)} or pass sizes as keywords")
        depth, hidden, heads, patch = NAMED[name]
        base = replace(base, depth=depth, hidden_size=hidden, num_heads=heads, patch_size=patch)
    merged = {**asdict(base), **overrides}
    if "encoder_depth" not in overrides:
        merged["encoder_depth"] = min(merged["encoder_depth"], merged["depth"])
    return LightningDiTConfig.from_dict(merged)


def build_lightningdit(name: str | None = None, **overrides) -> "LightningDiT":
    return LightningDiT(lightningdit_config(name, **overrides))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back (upstream's models/rmsnorm.py, eps 1e-6)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, grid: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (grid * grid, head_dim), as upstream's VisionRotaryEmbeddingFast(head_dim // 2, grid) makes
    them. Token r * grid + c: the first half of the head rotates by the row r, the second half by the column c;
    within a half, channels 2k and 2k + 1 form a pair turned by the angle pos * theta^(-2k / (head_dim / 2))."""
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half)
    pos = torch.arange(grid, device="cpu") / grid * grid  # upstream's expression: bit-equal on any grid
    angles = (pos[:, None] * freqs[None]).repeat_interleave(2, dim=-1)  # (grid, half): pairs share an angle
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos(), table.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class Rope2d(nn.Module):
    """`feat_rope`: the rotation tables as persistent buffers (upstream saves them in every state_dict)."""

    def __init__(self, head_dim, grid):
        super().__init__()
        # made on the CPU (exact float32 values; no meta-device ops, which cost seconds of symbolic-shape imports),
        # then moved where the surrounding `with torch.device(...)` builds the model
        cos, sin = rope_tables(head_dim, grid)
        here = torch.empty(0).device
        self.register_buffer("freqs_cos", cos.to(here))
        self.register_buffer("freqs_sin", sin.to(here))

    def forward(self, x):
        return x * self.freqs_cos + rotate_pairs(x) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim, heads, qk_norm, use_rmsnorm):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if qk_norm:  # upstream: RMSNorm with RMSNorm on, else nn.LayerNorm with its defaults (affine, eps 1e-5)
            norm = RMSNorm if use_rmsnorm else nn.LayerNorm
            self.q_norm, self.k_norm = norm(dim // heads), norm(dim // heads)
        else:
            self.q_norm = self.k_norm = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class SwiGLU(nn.Module):
    """w3(silu(a) * b) with (a, b) the two halves of w12(x), biases on (upstream's SwiGLUFFN)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GeluMlp(nn.Module):
    """timm's Mlp with tanh GELU: the MLP with SwiGLU off."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def token_norm(dim, use_rmsnorm):
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class Block(nn.Module):
    def __init__(self, c: LightningDiTConfig):
        super().__init__()
        dim = c.hidden_size
        self.norm1 = token_norm(dim, c.use_rmsnorm)
        self.attn = Attention(dim, c.num_heads, c.use_qknorm, c.use_rmsnorm)
        self.norm2 = token_norm(dim, c.use_rmsnorm)
        self.mlp = SwiGLU(dim, c.swiglu_hidden) if c.use_swiglu else GeluMlp(dim, int(dim * c.mlp_ratio))
        self.wo_shift = c.wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if c.wo_shift else 6) * dim))

    def forward(self, x, c, rope):
        if self.wo_shift:
            scale_a, gate_a, scale_m, gate_m = self.adaLN_modulation(c).chunk(4, dim=-1)
            shift_a = shift_m = torch.zeros_like(scale_a)
        else:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, c: LightningDiTConfig):
        super().__init__()
        dim = c.hidden_size
        self.norm_final = token_norm(dim, c.use_rmsnorm)
        self.linear = nn.Linear(dim, c.patch_size * c.patch_size * c.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SnippetEmbedder(nn.Module):
    """`condition_projection` in v2: element-wise dropout on the snippet, then Linear(snippet_dim, D) (upstream's
    FeatureEmbedder; v1 drops after the Linear instead). `mask`, set from outside for one training step, replaces
    the dropout draw: (N, snippet_dim), already divided by 1 - p."""

    def __init__(self, snippet_dim, dim, dropout):
        super().__init__()
        self.linear = nn.Linear(snippet_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.mask = None

    @property
    def mask_features(self) -> int:
        """The width of `mask`: v2 drops before the Linear, so the snippet's width."""
        return self.linear.in_features

    def forward(self, snippet):
        if self.training:
            snippet = snippet * self.mask.to(snippet.dtype) if self.mask is not None else self.dropout(snippet)
        return self.linear(snippet)


class LightningDiT(nn.Module):
    """GMem v2's backbone; called as model(x, t, snippet) with t = 1 noise, t = 0 data (see the module docstring:
    v_ours(x, t) = -v_upstream(x, 1 - t))."""

    def __init__(self, config: LightningDiTConfig):
        super().__init__()
        self.config = c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)  # t in [0, 1] as it is, as upstream (no x1000)
        self.condition_projection = SnippetEmbedder(c.snippet_dim, c.hidden_size, c.condition_dropout)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.hidden_size), requires_grad=False)
        grid = c.input_size // c.patch_size
        self.feat_rope = Rope2d(c.hidden_size // c.num_heads, grid) if c.use_rope else None
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.projector = nn.ModuleList([projector(c.hidden_size, c.projector_dim, c.repa_dim)])
        self.final_layer = FinalLayer(c)
        if not any(p.is_meta for p in self.parameters()):
            self.initialize_weights()

    @property
    def projectors(self) -> nn.ModuleList:
        """v1's name for the REPA head (the trainer freezes `projectors`); the state_dict keeps upstream's
        singular `projector`."""
        return self.projector

    def initialize_weights(self):
        """Upstream's init: xavier linears with zero biases, fixed sin-cos positions, N(0, 0.02) timestep MLP, a zero
        output bias. Unlike SiT, upstream leaves adaLN and the output weight random (its zeroing is commented out)."""
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
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x):
        return unpatchify(x, self.config.patch_size, self.config.in_channels)

    def check_inputs(self, x, t, snippet):
        check_inputs(self.config, x, t, snippet)

    def forward(self, x, t, snippet):
        """Velocity for t = 1 noise, t = 0 data: -v_upstream(x, 1 - t)."""
        self.check_inputs(x, t, snippet)
        return -self._forward(x, 1 - t, snippet, want_projection=False)[0]

    def forward_with_projection(self, x, t, snippet):
        """(velocity in our convention, REPA projector output after block `encoder_depth`): the training path."""
        self.check_inputs(x, t, snippet)
        v, projected = self._forward(x, 1 - t, snippet, want_projection=True)
        return -v, projected

    def forward_upstream(self, x, s, snippet):
        """The network in upstream's convention: s = 0 noise, s = 1 data, velocity x - eps."""
        self.check_inputs(x, s, snippet)
        return self._forward(x, s, snippet, want_projection=False)[0]

    def _forward(self, x, s, snippet, want_projection):
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(s) + self.condition_projection(snippet.to(h.dtype))
        projected = None
        for i, block in enumerate(self.blocks):
            h = block(h, c, self.feat_rope)
            if want_projection and i + 1 == self.config.encoder_depth:
                projected = self.projector[0](h)
        return self.unpatchify(self.final_layer(h, c)), projected


def upstream_state(obj) -> dict:
    """The state_dict inside an upstream file's contents: a bare state_dict, or upstream's training checkpoint
    {"model", "ema", "config"} whose "ema" weights are the ones its sampler loads (utils/loading.py)."""
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        obj = obj["ema"]
    if isinstance(obj, dict) and ("network" in obj or any(str(k).startswith("projectors.") for k in obj)):
        raise ValueError("This looks like a GMem v1 file (SiT: a 'network' entry or its plural 'projectors' head), "
                         "not a v2 LightningDiT one: load it as a v1 checkpoint (SiT-XL/2).")
    tensors = isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    if not tensors:
        what = [str(k) for k in list(obj)[:6]] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"Not a LightningDiT checkpoint: expected a state_dict of tensors or {{'ema': state_dict}}; "
                         f"found {what}")
    return obj


def load_upstream_checkpoint(model: LightningDiT, path) -> LightningDiT:
    """Load an upstream .pt/.pth (bare or {"ema": ...}) into `model` strictly; tensors only (weights_only=True), an
    error that names missing, unexpected and mis-shaped keys."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:  # code in the file; a truncated zip
        raise ValueError(f"Could not read {path} as a tensors-only checkpoint ({type(e).__name__}: {e}). A file that "
                         f"needs code to unpickle is refused; a truncated one must be downloaded again.") from e
    load_network_state(model, upstream_state(obj))
    return model
