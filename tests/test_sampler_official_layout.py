"""The network against a forward pass written out from the official code, not from ours.

Each helper below follows the released v1 code's building blocks line by line (DiT / SiT models.py, timm's
Attention and Mlp, MAE's get_2d_sincos_pos_embed, REPA's projector tap; GMEM.md lists them) and reads the weights
by their state_dict names, so a layout mistake shared by models/sit.py and the fast path (both read the same modules)
still shows: which third of qkv is q, which chunk of adaLN is shift, scale or gate, the attention's 1/sqrt(d),
tanh GELU, LayerNorm eps 1e-6, the positional grid, after which block the REPA projector reads.
Everything runs in float64 (the timestep frequencies in float32, as the official code computes them), so the two
must agree to 1e-10: any of those mistakes moves the output by far more (measured: >= 1e-7, most >= 1e-3).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmem_explore import build_model
from gmem_explore.sampling import sample

from conftest import TINY, randomize

# depth 3 with the REPA tap after block 2: a tap one block early, one block late or at the end each differ
CONFIG = {**TINY, "depth": 3, "encoder_depth": 2}


def official_timestep_embedding(t, dim=256, max_period=10000):
    """DiT's TimestepEmbedder.timestep_embedding (float32, cos half first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def mae_1d_sincos(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d_sincos(embed_dim, grid_size):
    """MAE's get_2d_sincos_pos_embed, as DiT / SiT initialise pos_embed."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = mae_1d_sincos(embed_dim // 2, grid[0])
    emb_w = mae_1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6)


def timm_attention(sd, prefix, x, heads):
    """timm Attention: qkv rows are [q of every head, k, v]; softmax(q k^T / sqrt(head width)) v; proj."""
    b, n, c = x.shape
    qkv = F.linear(x, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"]).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


def official_forward(sd, cfg, x, t, snippet):
    """(velocity, projector output) of the released GMem v1 SiT, from its state_dict."""
    lin = lambda name, z: F.linear(z, sd[name + ".weight"], sd[name + ".bias"])  # noqa: E731
    p = cfg.patch_size
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    h = h + sd["pos_embed"]
    temb = official_timestep_embedding(t).to(x.dtype)
    temb = lin("t_embedder.mlp.2", F.silu(lin("t_embedder.mlp.0", temb)))
    c = temb + lin("condition_projection.linear", snippet)  # dropout: training only
    zs = None
    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = lin(pre + "adaLN_modulation.1",
                                                                              F.silu(c)).chunk(6, dim=1)
        y = layer_norm(h) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        h = h + gate_msa[:, None] * timm_attention(sd, pre + "attn.", y, cfg.num_heads)
        y = layer_norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        h = h + gate_mlp[:, None] * lin(pre + "mlp.fc2", gelu_tanh(lin(pre + "mlp.fc1", y)))
        if i + 1 == cfg.encoder_depth:  # REPA: the projector reads the tokens after block encoder_depth
            z = F.silu(lin("projectors.0.0", h))
            zs = lin("projectors.0.4", F.silu(lin("projectors.0.2", z)))
    shift, scale = lin("final_layer.adaLN_modulation.1", F.silu(c)).chunk(2, dim=1)
    out = lin("final_layer.linear", layer_norm(h) * (1 + scale[:, None]) + shift[:, None])
    n, side, ch = out.shape[0], cfg.input_size // p, cfg.in_channels
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(n, side, side, p, p, ch))  # DiT's unpatchify
    return out.reshape(n, ch, side * p, side * p), zs


@pytest.fixture
def model64():
    # std 0.2: large enough that tanh vs exact GELU, LayerNorm's eps and every layout choice change the output
    return randomize(build_model(**CONFIG), seed=3, std=0.2).double().eval()


def inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0.9, 0.35, 0.04])[:n].double(),
            torch.randn(n, 16, generator=g, dtype=torch.float64))


def test_velocity_and_repa_projection_follow_the_official_code(model64):
    x, t, s = inputs()
    ref_v, ref_z = official_forward(model64.state_dict(), model64.config, x, t, s)
    v, z = model64.forward_with_projection(x, t, s)
    torch.testing.assert_close(v, ref_v, rtol=0, atol=1e-10)
    torch.testing.assert_close(z, ref_z, rtol=0, atol=1e-10)
    assert ref_v.abs().mean() > 0.1 and ref_z.abs().mean() > 0.01  # not a comparison of zeros


def test_fast_path_velocity_follows_the_official_code(model64):
    """One Euler step from t = 1 to 0 is x - v(x, 1): the fast path's network (its own block and final-layer code,
    its precomputed modulation) against the official forward."""
    x, _, s = inputs()
    ref_v, _ = official_forward(model64.state_dict(), model64.config, x, torch.ones(3, dtype=torch.float64), s)
    for fast in (False, "fp32"):
        out = sample(model64, x, s, method="euler", steps=1, fast=fast)  # float32 out
        torch.testing.assert_close(out.double(), x - ref_v, rtol=0, atol=1e-6)


def test_fresh_positional_embedding_is_maes_2d_sincos():
    model = build_model(**CONFIG)
    expected = torch.from_numpy(mae_2d_sincos(CONFIG["hidden_size"], CONFIG["input_size"] // CONFIG["patch_size"]))
    torch.testing.assert_close(model.pos_embed[0].double(), expected, rtol=0, atol=1e-6)
