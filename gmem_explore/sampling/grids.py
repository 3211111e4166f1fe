"""Time grids of the samplers: which times t (1 = noise, 0 = data) each method visits, and the checks of a
method, a step count and a guidance setting. The released recipes (GMem v1, samplers/samplers.py):
- "sde": Euler-Maruyama on linspace(1, 0.04, N) then 0 (the last step, 0.04 -> 0, is deterministic).
- "euler": Euler on linspace(1, 0, N + 1).
- "heun": Euler plus Heun's correction on every step but the last (2N - 1 network evaluations).
"""
from __future__ import annotations

import math
import numbers

import torch

from ..values import is_whole

METHODS = ("sde", "euler", "heun")
MAX_STEPS = 5000  # beyond this a typo is likelier than a wish; 250 is the released setting
SDE_LAST_T = 0.04  # the released SDE grid stops its noisy steps here


def time_grid(method: str, steps: int) -> torch.Tensor:
    """The float64 times visited, from 1 down to 0 (length steps + 1). Trusts its caller: method and steps come
    from a SamplerSettings, checked when it was made."""
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
