"""Time grids of the samplers: which times t (1 = noise, 0 = data) each method visits, and the checks of a
method, a step count, a time shift and a guidance setting. N = steps:
- "sde": Euler-Maruyama on linspace(1, 0.04, N) then 0 (the last step, 0.04 -> 0, is deterministic): GMem v1's
  released sampler (samplers/samplers.py), N network evaluations.
- "euler": Euler on linspace(1, 0, N + 1). N evaluations.
- "heun": Euler plus Heun's correction on every step but the last (2N - 1 network evaluations).
- "sde-heun": GMem v2's released sampler (transport/, gmem_sde_xl.yaml: stochastic Heun, linear diffusion, a "Mean"
  last step of 0.004) on linspace(1, 0.004, N) then 0. N is upstream's num_sampling_steps (50 time points: 49
  noisy Heun steps of two evaluations, then the deterministic last step): 2N - 1 = 99 evaluations.
- time_shift s (ODE methods only, upstream's timestep_shift): every grid time moves to 1 - s u / (1 + (s - 1) u)
  with u = 1 - t (upstream's time, where 0 is noise); s = 1 is no shift (upstream writes 0 for none). GMem v2's
  ODE recipe (gmem_ode_xl.yaml) is Euler on 50 time points with s = 0.3: steps=49 here.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..values import is_whole

METHODS = ("sde", "euler", "heun", "sde-heun")
ODE_METHODS = ("euler", "heun")  # the methods a time shift applies to, as upstream's ODE sampler
MAX_STEPS = 5000  # beyond this a typo is likelier than a wish; 250 is the released setting
SDE_LAST_T = 0.04  # the released v1 SDE grid stops its noisy steps here
SDE_HEUN_LAST_T = 0.004  # v2's "Mean" last step: upstream's last_step_size (gmem_sde_xl.yaml)


def time_grid(method: str, steps: int, time_shift: float = 1.0) -> torch.Tensor:
    """The float64 times visited, from 1 down to 0 (length steps + 1). Trusts its caller: method and steps come
    from a SamplerSettings, checked when it was made."""
    zero = torch.zeros(1, dtype=torch.float64)
    if method == "sde":
        return torch.cat([torch.linspace(1.0, SDE_LAST_T, steps, dtype=torch.float64), zero])
    if method == "sde-heun":
        return torch.cat([torch.linspace(1.0, SDE_HEUN_LAST_T, steps, dtype=torch.float64), zero])
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if time_shift != 1.0:
        u = 1.0 - grid  # upstream's time: 0 noise, 1 data; its shift formula is written in it
        grid = 1.0 - time_shift * u / (1.0 + (time_shift - 1.0) * u)
    return grid


def evaluations(method: str, steps: int) -> int:
    """Network evaluations per image (without guidance)."""
    return 2 * steps - 1 if method in ("heun", "sde-heun") else steps


def check_time_shift(time_shift, method: str) -> float:
    """The shift as a float, or a ValueError: a finite number > 0, and only for the ODE methods."""
    if isinstance(time_shift, bool) or not isinstance(time_shift, numbers.Real) or not 0 < time_shift < math.inf:
        raise ValueError(f"time_shift must be a finite number > 0 (1 means none; GMem v2's ODE uses 0.3); got "
                         f"{time_shift!r}")
    if time_shift != 1.0 and method not in ODE_METHODS:
        raise ValueError(f"time_shift applies to the ODE methods {ODE_METHODS}, as upstream's timestep_shift; "
                         f"method {method!r} has a fixed grid: drop time_shift or choose euler")
    return float(time_shift)


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
