"""Randomness of a sampling run: one torch.Generator per image, drawn in a fixed order (initial noise first, then
every SDE step's noise up front), so an image does not depend on the batch it was sampled in or on the number of
GPUs."""
from __future__ import annotations

from typing import Sequence

import torch


def make_generators(seeds: Sequence[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device=None) -> torch.Tensor:
    """One standard normal tensor of `shape` per generator: the first draw of each image's generator."""
    device = device or generators[0].device
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


def draw_sde_noise(generators: Sequence[torch.Generator] | None, n: int, steps: int, shape: tuple[int, ...],
                   device, dim: int = 0) -> torch.Tensor | None:
    """The SDE's per-step noise: steps - 1 draws of `shape` per image, all drawn up front from that image's generator
    (random generators when none are given). This rule is what makes every sampling path give the same images.
    Stacked along `dim`: 0 gives (image, step, ...), 1 gives (step, image, ...). None when there are no noisy steps."""
    if steps < 2:
        return None
    gens = generators if generators is not None else make_generators(torch.randint(0, 2**62, (n,)).tolist(), device)
    return torch.stack([torch.randn((steps - 1, *shape), generator=g, device=device) for g in gens], dim)
