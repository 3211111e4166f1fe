"""iter_sample() and sample(): the public entry points of every sampler. They check what they are given (the sampler
settings once, as a SamplerSettings), then run the reference loop (solvers.py) or the fast path (fast.py), which give
the same images (within 2% in bf16). iter_sample is the loop itself, a generator; sample runs it to its end."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from . import fast as fast_path
from .fast_options import FastOptions, FastRun
from .settings import SamplerSettings
from .solvers import StepInfo, iter_reference, run_to_end


def iter_sample(
    model: Callable,
    noise: torch.Tensor,
    snippets: torch.Tensor,
    method: str = "sde",
    steps: int = 250,
    generators: Sequence[torch.Generator] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    state_dtype: torch.dtype = torch.float64,
    fast: bool | str | FastOptions | None = None,
    fast_report: Callable[[FastRun], None] | None = None,
    time_shift: float = 1.0,
) -> Iterator:
    """sample() as a generator: a StepInfo after every step (step, total, t, the state x and the denoised estimate),
    then the final state in float32. The arguments are checked now, before the first step; stop iterating (or
    .close() it) and the sampler stops after the step under way.

        for item in iter_sample(model, noise, snippets, "heun", 8):
            if isinstance(item, StepInfo): print(item.step, item.total)
            else: latents = item
    """
    settings = SamplerSettings(method, steps, guidance, guidance_interval, time_shift)
    return sample_steps(model, noise, snippets, settings, generators, state_dtype, fast, fast_report)


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
    fast: bool | str | FastOptions | None = None,
    fast_report: Callable[[FastRun], None] | None = None,
    time_shift: float = 1.0,
) -> torch.Tensor:
    """Integrate from t = 1 (noise) to t = 0; returns the final state in float32. callback(StepInfo) runs after
    every step (an exception it raises stops the sampler there).

    method: "sde" (GMem v1's released sampler), "euler", "heun", or "sde-heun" (GMem v2's); steps: the steps taken,
    which for "sde-heun" is upstream's num_sampling_steps (50: 99 evaluations) and for an Euler ODE on upstream's
    N time points is N - 1 (see grids.py). guidance: classifier-free guidance with an all-zero snippet, applied
    only where t is inside guidance_interval (GMem v2's recipe: 7.75 on (0, 0.11)); the unconditional half runs
    only on those steps. time_shift: the ODE grid's shift (GMem v2's ODE: 0.3; 1 = none).

    fast: route to gmem_explore.sampling.fast (same noise, same images within 2% in bf16, 1e-4 in fp32; fp8 is faster
    but not within 2% on a trained model, and SiT's only; float32 state; every method and time shift): None = on for
    GMemSiT and LightningDiT models on CUDA, off elsewhere; False;
    True (FastOptions()); a precision of PRECISIONS ("bf16", "fp32", "fp8", "fp8-mlp"); or FastOptions(...) for every
    setting. With None or True the precision is resolve_precision's default (bf16 on CUDA, fp32 on the CPU).
    fast_report: called with a FastRun record of what the fast path ran (compiled or not, graphs, precision, ...);
    the reference path does not call it.
    A torch module left in training mode samples as in eval mode (no snippet dropout; see eval_mode).
    """
    return run_to_end(iter_sample(model, noise, snippets, method, steps, generators, guidance, guidance_interval,
                                  state_dtype, fast, fast_report, time_shift), callback)


def sample_steps(model: Callable, noise: torch.Tensor, snippets: torch.Tensor, settings: SamplerSettings,
                 generators: Sequence[torch.Generator] | None = None, state_dtype: torch.dtype = torch.float64,
                 fast: bool | str | FastOptions | None = None,
                 fast_report: Callable[[FastRun], None] | None = None) -> Iterator:
    """iter_sample with its settings already made (a SamplerSettings is checked when made, so only the tensors are
    checked here): what GMemPipeline calls for each batch."""
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
    if generators is not None and len(generators) != n:
        raise ValueError(f"need one generator per image: {n} images, {len(generators)} generators")
    if generators is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError("generators must be torch.Generator objects, one per image; for seeds use "
                        "gmem_explore.sampling.make_generators(seeds, device)")

    if fast is None:
        fast = noise.device.type == "cuda" and fast_path.supports(model) and fast_path.handles(settings)
    if fast is not False:  # said now, not at the first step
        options = FastOptions.from_fast(fast)
        fast_path.check_model(model, options.precision)
        if not fast_path.handles(settings):
            raise ValueError(f"the fast path runs {fast_path.FAST_METHODS}; method {settings.method!r} runs on the "
                             f"reference loop: use fast=False")
        fast_path.resolve_precision(options.precision, noise.device)  # an unusable precision is refused now
        return fast_path.iter_fast(model, noise, snippets, settings.method, settings.steps, generators,
                                   settings.guidance, settings.guidance_interval, options=options, report=fast_report,
                                   time_shift=settings.time_shift)
    return iter_reference(model, noise, snippets, settings, generators, state_dtype)
