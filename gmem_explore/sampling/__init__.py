"""Samplers for the linear interpolant x_t = (1 - t) x + t eps (t = 1 noise, t = 0 data), velocity v = eps - x.

One entry point, one signature for every method (k-diffusion style):

    sample(model, noise, snippets, method="sde", steps=250, generators=None, guidance=1.0,
           guidance_interval=(0.0, 1.0), callback=None, fast=None) -> final latents

Where things live:
- grids.py      which times each method visits (time grids apart from the solvers), and the argument checks
- noise.py      one generator per image: initial noise and the SDE's per-step noise
- solvers.py    the reference loop (Euler, Heun, SDE Euler-Maruyama), StepInfo for callbacks
- sampler.py    sample(): checks, then the reference loop or the fast path
- settings.py   SamplerSettings: method, steps, guidance, interval; each checkpoint's recipe
- fast*.py, fp8.py, fused_ops.py   the fast path (bf16 / FP8, compiled, CUDA graphs); fast_options.py holds its
                options (FastOptions, passed as sample(..., fast=FastOptions(...))) and its record (FastRun)
A new solver is a branch of the reference loop (and of the fast path's plan) plus its grid in grids.py.
"""
from .fast_options import FastOptions, FastRun
from .grids import MAX_STEPS, METHODS, SDE_LAST_T, check_guidance, check_method_and_steps, evaluations, time_grid
from .noise import draw_sde_noise, initial_noise, make_generators
from .sampler import sample
from .solvers import StepInfo, sample_reference

__all__ = ["FastOptions", "FastRun", "MAX_STEPS", "METHODS", "SDE_LAST_T", "StepInfo", "check_guidance",
           "check_method_and_steps", "draw_sde_noise", "evaluations", "initial_noise", "make_generators", "sample",
           "sample_reference", "time_grid"]
