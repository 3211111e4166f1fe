"""Samplers for the linear interpolant x_t = (1 - t) x + t eps (t = 1 noise, t = 0 data), velocity v = eps - x.

One signature for all of them (k-diffusion style):

    sample(model, noise, snippets, method="sde", steps=250, generators=None, guidance=1.0,
           guidance_interval=(0.0, 1.0), callback=None) -> final state

`model` is any callable model(x, t, snippet) -> velocity. Randomness comes from one torch.Generator per image
(the SDE's per-step noise is drawn up front from that image's generator), so an image does not depend on the
batch it was sampled in or on the number of GPUs. The loops are generators (iter_sample): a StepInfo after every
step, then the final state; progress bars, live previews and cancellation (stop iterating) hang off it, and
sample(callback=...) is the same loop run to its end.

The released recipes (GMem v1, samplers/samplers.py):
- "sde": Euler-Maruyama on linspace(1, 0.04, N) then 0; g(t)^2 = 2t; drift v - 0.5 g^2 s with the score
  s = -((1 - t) v + x_t) / t; the last step (0.04 -> 0) is deterministic. N network evaluations.
- "euler": Euler on linspace(1, 0, N + 1). N evaluations.
- "heun": Euler plus Heun's correction on every step but the last. 2N - 1 evaluations.
GMem v2's (LINs-lab/GMem transport/, SiT's code; see grids.py for its grid):
- "sde-heun": each step first adds the step's noise, x_hat = x + sqrt(2t |dt|) eps (upstream's linear diffusion
  g = 1 - t in its time is t here, the same g^2 = 2t as v1's SDE), then takes a Heun step of the SDE drift
  (2 - t) v + x from x_hat; the last step (0.004 -> 0) is one deterministic drift step ("Mean"). Upstream calls
  the network twice per evaluation (once for the drift, once for the score, on the same input); here the one
  velocity gives both. 2N - 1 evaluations.
State is kept in float64 as in the reference; the model runs in its own dtype. This module holds the reference
loop; sampler.sample checks the arguments and picks it or the fast path (fast.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .noise import draw_sde_noise
from .settings import SamplerSettings


@dataclass
class StepInfo:
    """What a sampler loop yields after each step (and what sample's callback sees)."""

    step: int  # steps done so far (1..total)
    total: int
    t: float  # time reached by this step
    x: torch.Tensor  # current state
    denoised: torch.Tensor  # estimate of the clean sample, x_t - t v (for previews)


def sde_drift(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """v - 0.5 g^2 s with g^2 = 2t and s = -((1 - t) v + x) / t; it simplifies to (2 - t) v + x."""
    return (2.0 - t) * v + x


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
def iter_reference(model: Callable, noise: torch.Tensor, snippets: torch.Tensor, settings: SamplerSettings,
                   generators: Sequence[torch.Generator] | None = None, state_dtype: torch.dtype = torch.float64):
    """The reference loop, written as the released samplers are (float64 state, the model in its own dtype), as a
    generator: a StepInfo after every step, then the final state in float32. Its arguments are checked by
    sampling.iter_sample / sample, the public entry points. Closing it (or dropping it) stops it after the step
    under way: nothing runs in the background."""
    method, steps, guidance = settings.method, settings.steps, settings.guidance
    n = noise.shape[0]
    lo, hi = settings.guidance_interval
    dtype = _model_dtype(model)
    grid = settings.time_grid()
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

    noisy = method in ("sde", "sde-heun")
    sde_noise = draw_sde_noise(generators, n, steps, noise.shape[1:], noise.device) if noisy else None

    with eval_mode(model):
        x = noise.to(state_dtype)
        for i in range(steps):
            t_cur, t_next = float(grid[i]), float(grid[i + 1])
            dt = t_next - t_cur
            if method == "sde-heun" and i < steps - 1:  # the step's noise first, then a Heun step from there
                x = x + (2.0 * t_cur * abs(dt)) ** 0.5 * sde_noise[:, i].to(state_dtype)
            v = velocity(x, t_cur)
            denoised = x - t_cur * v
            if method == "sde-heun":
                drift = sde_drift(v, x, t_cur)
                if i < steps - 1:
                    x_pred = x + dt * drift
                    x = x + 0.5 * dt * (drift + sde_drift(velocity(x_pred, t_next), x_pred, t_next))
                else:  # the last step (0.004 -> 0): one deterministic drift step, upstream's "Mean"
                    x = x + dt * drift
            elif method == "sde":
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
            yield StepInfo(i + 1, steps, t_next, x, denoised)
    yield x.float()


def run_to_end(steps: Iterator, callback: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
    """Exhaust a sampler generator (iter_reference, fast.iter_fast), calling callback(StepInfo) after every step;
    returns its final state. A callback that raises stops the loop there: the generator is closed at once, not when
    the traceback that holds it is freed."""
    try:
        for item in steps:
            if not isinstance(item, StepInfo):
                return item
            if callback is not None:
                callback(item)
    finally:
        steps.close()
    raise RuntimeError("the sampler ended without its final state")


def sample_reference(model: Callable, noise: torch.Tensor, snippets: torch.Tensor, settings: SamplerSettings,
                     generators: Sequence[torch.Generator] | None = None,
                     callback: Callable[[StepInfo], None] | None = None,
                     state_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """iter_reference run to its end; returns the final state in float32."""
    return run_to_end(iter_reference(model, noise, snippets, settings, generators, state_dtype), callback)
