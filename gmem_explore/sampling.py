"""Samplers for the linear interpolant x_t = (1 - t) x + t eps (t = 1 noise, t = 0 data), velocity v = eps - x.

One signature for all of them (k-diffusion style):

    sample(model, noise, snippets, method="sde", steps=250, generators=None, guidance=1.0,
           guidance_interval=(0.0, 1.0), callback=None) -> final state

`model` is any callable model(x, t, snippet) -> velocity. Randomness comes from one torch.Generator per image
(the SDE's per-step noise is drawn up front from that image's generator), so an image does not depend on the
batch it was sampled in or on the number of GPUs. `callback(StepInfo)` runs after every step: progress bars,
live previews and cancellation (raise) all hang off it.

The released recipes (GMem v1, samplers/samplers.py):
- "sde": Euler-Maruyama on linspace(1, 0.04, N) then 0; g(t)^2 = 2t; drift v - 0.5 g^2 s with the score
  s = -((1 - t) v + x_t) / t; the last step (0.04 -> 0) is deterministic. N network evaluations.
- "euler": Euler on linspace(1, 0, N + 1). N evaluations.
- "heun": Euler plus Heun's correction on every step but the last. 2N - 1 evaluations.
State is kept in float64 as in the reference; the model runs in its own dtype.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .values import is_whole

METHODS = ("sde", "euler", "heun")
MAX_STEPS = 5000  # beyond this a typo is likelier than a wish; 250 is the released setting
SDE_LAST_T = 0.04  # the released SDE grid stops its noisy steps here


@dataclass
class StepInfo:
    """What a callback sees after each step."""

    step: int  # steps done so far (1..total)
    total: int
    t: float  # time reached by this step
    x: torch.Tensor  # current state
    denoised: torch.Tensor  # estimate of the clean sample, x_t - t v (for previews)

    def images_done(self, start: int) -> float:
        """How many images of a pipeline call are done, counting this batch's share of its steps, when the batch
        began at image `start` (the callback's second argument): what progress bars show."""
        return start + self.x.shape[0] * self.step / self.total


def time_grid(method: str, steps: int) -> torch.Tensor:
    """The float64 times visited, from 1 down to 0 (length steps + 1)."""
    check_method_and_steps(method, steps)
    if method == "sde":
        return torch.cat([torch.linspace(1.0, SDE_LAST_T, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def evaluations(method: str, steps: int) -> int:
    """Network evaluations per image (without guidance)."""
    return 2 * steps - 1 if method == "heun" else steps


def check_method_and_steps(method: str, steps) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown sampler {method!r}; choose one of {METHODS}")
    # is_whole: a NumPy integer (np.int64 from an array of settings) is an integer too
    if not is_whole(steps) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}]; got {steps!r} (the released SDE uses 250)")


def check_guidance(guidance, interval=(0.0, 1.0)) -> tuple[float, tuple[float, float]]:
    """(guidance, (low, high)) as Python floats, or a ValueError; a 0-d tensor counts as a number."""
    if isinstance(guidance, torch.Tensor) and guidance.ndim == 0 and guidance.is_floating_point():
        guidance = guidance.item()
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not 0 <= guidance < math.inf:
        # NaN fails both comparisons; inf made every image NaN (black)
        raise ValueError(f"guidance must be a finite number >= 0 (1 means none); got {guidance!r}")
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):  # None, one number, three numbers, strings: not a (low, high) pair
        raise ValueError(f"guidance_interval must be a pair (low, high) of times with 0 <= low <= high <= 1, e.g. "
                         f"(0.0, 1.0) for every step; got {interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"guidance_interval must satisfy 0 <= low <= high <= 1; got {(lo, hi)}")
    return float(guidance), (lo, hi)


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """v - 0.5 g^2 s with g^2 = 2t and s = -((1 - t) v + x) / t; it simplifies to (2 - t) v + x."""
    return (2.0 - t) * v + x


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


def _model_dtype(model) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration):
        return torch.float32


@contextmanager
def eval_mode(model):
    """Sampling is inference: a torch module in training mode (build_model's default, before .eval()) applied the
    snippet dropout on every step, so the same seeds gave other images on every run, and other images than the fast
    path (which never applies it). Such a module runs in eval mode for the call; every submodule's own flag is
    restored afterwards. Modules already in eval mode, and plain callables, are left alone."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if not any(training for _, training in modes):
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def sample(
    model: Callable,
    noise: torch.Tensor,
    snippets: torch.Tensor,
    method: str = "sde",
    steps: int = 250,
    generators: Sequence[torch.Generator] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    callback: Callable[[StepInfo], None] | None = None,
    state_dtype: torch.dtype = torch.float64,
    fast: bool | str | None = None,
) -> torch.Tensor:
    """Integrate from t = 1 (noise) to t = 0; returns the final state in float32.

    fast: route to gmem_explore.fast (same noise, same images within 2% in bf16, 1e-4 in fp32; fp8 is faster but
    not within 2% on a trained model; float32 state): None = on for GMemSiT models on CUDA, off elsewhere; True; False; or a precision of fast.PRECISIONS
    ("bf16", "fp32", "fp8", "fp8-mlp"). With None or True the precision is fast.resolve_precision's default.
    A torch module left in training mode samples as in eval mode (no snippet dropout; see eval_mode).
    """
    check_method_and_steps(method, steps)
    for name, x in (("noise", noise), ("snippets", snippets)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__} (use torch.as_tensor(...))")
        if x.is_meta:
            raise ValueError(f"{name}: the tensor is on the 'meta' device (a shape without values); give real values")
    if noise.ndim < 2:
        raise ValueError(f"noise must be batched (N, C, H, W); got shape {tuple(noise.shape)}")
    n = noise.shape[0]
    if snippets.ndim != 2 or snippets.shape[0] != n:
        raise ValueError(f"snippets must have shape ({n}, D), one per noise sample; got {tuple(snippets.shape)}")
    if not torch.isfinite(snippets).all():
        raise ValueError("snippets contain NaN or infinite values; choose other rows or re-encode the image")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or infinite values")
    guidance, guidance_interval = check_guidance(guidance, guidance_interval)
    lo, hi = guidance_interval
    if generators is not None and len(generators) != n:
        raise ValueError(f"need one generator per image: {n} images, {len(generators)} generators")
    if generators is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError("generators must be torch.Generator objects, one per image; for seeds use "
                        "gmem_explore.sampling.make_generators(seeds, device)")

    from . import fast as fast_path  # imported here: fast imports this module

    if fast is None:
        fast = noise.device.type == "cuda" and fast_path.supports(model)
    if fast:
        return fast_path.sample_fast(model, noise, snippets, method, steps, generators, guidance, guidance_interval,
                                     callback, precision=fast if isinstance(fast, str) else None)

    dtype = _model_dtype(model)
    grid = time_grid(method, steps)
    snippets = snippets.to(device=noise.device, dtype=dtype)
    zeros = torch.zeros_like(snippets)
    ones = torch.ones(n, device=noise.device, dtype=dtype)

    def velocity(x, t: float):
        t_vec = ones * t
        if guidance != 1.0 and lo <= t <= hi:
            both = model(torch.cat([x, x]).to(dtype), torch.cat([t_vec, t_vec]), torch.cat([snippets, zeros]))
            cond, uncond = both.to(state_dtype).chunk(2)
            return uncond + guidance * (cond - uncond)
        return model(x.to(dtype), t_vec, snippets).to(state_dtype)

    sde_noise = draw_sde_noise(generators, n, steps, noise.shape[1:], noise.device) if method == "sde" else None

    with eval_mode(model):
        x = noise.to(state_dtype)
        for i in range(steps):
            t_cur, t_next = float(grid[i]), float(grid[i + 1])
            dt = t_next - t_cur
            v = velocity(x, t_cur)
            denoised = x - t_cur * v
            if method == "sde":
                x = x + sde_drift(v, x, t_cur) * dt
                if i < steps - 1:  # every step but the last adds noise: sqrt(2t) * sqrt(|dt|) * eps
                    x = x + (2.0 * t_cur * abs(dt)) ** 0.5 * sde_noise[:, i].to(state_dtype)
            else:
                x_euler = x + dt * v
                if method == "heun" and i < steps - 1:
                    v_next = velocity(x_euler, t_next)
                    x = x + dt * 0.5 * (v + v_next)
                else:
                    x = x_euler
            if callback is not None:
                callback(StepInfo(i + 1, steps, t_next, x, denoised))
    return x.float()
