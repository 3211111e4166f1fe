"""Guidance acts on every channel of the velocity, in both sampling paths.

DiT's and SiT's sample.py guide only the first 3 output channels (eps, rest = out[:, :3], out[:, 3:], a relic of
learned-sigma outputs), so on 4-channel SD-VAE latents one channel would stay unguided. GMem's samplers derive from
REPA's, which combine the whole velocity: uncond + g (cond - uncond). The other tests' models have 1 or 3
channels, where a 3-channel guide cannot be told from a full one; these use 4, as gmem-v1-xl's latents have.
"""
import torch

from gmem_explore import build_model
from gmem_explore.sampling import initial_noise, make_generators, sample

from conftest import TINY, randomize


def branch_velocity(x, t, s):
    """Velocity 1 for a conditional row, 0 for the all-zero (unconditional) snippet, in every channel."""
    null = (s == 0).all(dim=1).view(-1, 1, 1, 1)
    return torch.where(null, torch.zeros_like(x), torch.ones_like(x))


def test_reference_sampler_guides_all_four_latent_channels():
    out = sample(branch_velocity, torch.zeros(2, 4, 2, 2), torch.ones(2, 3), "euler", 4, guidance=3.0)
    # guided velocity 0 + 3 (1 - 0) = 3 on four steps of dt -0.25, in each of the 4 channels
    torch.testing.assert_close(out, torch.full_like(out, -3.0))


def test_fast_path_guides_all_four_latent_channels():
    model = randomize(build_model(**{**TINY, "in_channels": 4}), seed=2, std=0.2).eval()
    gens = make_generators([3, 4], "cpu")
    noise = initial_noise(gens, (4, 8, 8))
    snippets = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
    kw = dict(method="euler", steps=3, guidance=4.0)
    ref = sample(model, noise, snippets, fast=False, **kw)
    out = sample(model, noise, snippets, fast="fp32", **kw)
    unguided = sample(model, noise, snippets, method="euler", steps=3, fast=False)
    # the guide's effect on the 4th channel is visible (not a comparison of equal images) and the same in both paths
    assert (ref[:, 3] - unguided[:, 3]).abs().max() > 1e-3
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
