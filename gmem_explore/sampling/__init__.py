"""Samplers for the linear interpolant x_t = (1 - t) x + t eps (t = 1 noise, t = 0 data), velocity v = eps - x.

One entry point, one signature for every method (k-diffusion style):

    sample(model, noise, snippets, method="sde", steps=250, generators=None, guidance=1.0,
           guidance_interval=(0.0, 1.0), callback=None, fast=None) -> final latents
    iter_sample(...same, without callback...) -> a generator: StepInfo after every step, then the final latents

Where things live:
- grids.py      which times each method visits (time grids apart from the solvers), and the argument checks
- noise.py      one generator per image: initial noise and the SDE's per-step noise
- solvers.py    the reference loop (Euler, Heun, SDE Euler-Maruyama) as a generator, StepInfo
- sampler.py    iter_sample() / sample(): checks, then the reference loop or the fast path
- settings.py   SamplerSettings: method, steps, guidance, interval; each checkpoint's recipe
- fast*.py, fp8.py, fused_ops.py   the fast path (bf16 / FP8, compiled, CUDA graphs); fast_options.py holds its
                options (FastOptions, passed as sample(..., fast=FastOptions(...))) and its record (FastRun)
A new solver is a branch of the reference loop (and of the fast path's plan) plus its grid in grids.py.
"""
from .fast_options import FastOptions, FastRun
from .grids import MAX_STEPS, METHODS, SDE_LAST_T, check_guidance, check_method_and_steps, evaluations, time_grid
from .noise import draw_sde_noise, initial_noise, make_generators
from .sampler import iter_sample, sample, sample_steps
from .settings import RECIPES, SamplerSettings
from .solvers import StepInfo, iter_reference, run_to_end, sample_reference

__all__ = ["FastOptions", "FastRun", "MAX_STEPS", "METHODS", "RECIPES", "SDE_LAST_T", "SamplerSettings", "StepInfo",
           "check_guidance", "check_method_and_steps", "draw_sde_noise", "evaluations", "initial_noise",
           "iter_reference", "iter_sample", "make_generators", "run_to_end", "sample", "sample_reference",
           "sample_steps", "time_grid"]
