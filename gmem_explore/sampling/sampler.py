"""sample(): the one public entry point of every sampler. It checks what it is given, then runs the reference loop
(solvers.py) or the fast path (fast.py), which give the same images (within 2% in bf16)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import fast as fast_path
from .fast_options import FastOptions, FastRun
from .grids import check_guidance, check_method_and_steps
from .solvers import StepInfo, sample_reference


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
) -> torch.Tensor:
    """Integrate from t = 1 (noise) to t = 0; returns the final state in float32.

    fast: route to gmem_explore.sampling.fast (same noise, same images within 2% in bf16, 1e-4 in fp32; fp8 is faster
    but not within 2% on a trained model; float32 state): None = on for GMemSiT models on CUDA, off elsewhere; False;
    True (FastOptions()); a precision of PRECISIONS ("bf16", "fp32", "fp8", "fp8-mlp"); or FastOptions(...) for every
    setting. With None or True the precision is resolve_precision's default (bf16 on CUDA, fp32 on the CPU).
    fast_report: called with a FastRun record of what the fast path ran (compiled or not, graphs, precision, ...);
    the reference path does not call it.
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
    if generators is not None and len(generators) != n:
        raise ValueError(f"need one generator per image: {n} images, {len(generators)} generators")
    if generators is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError("generators must be torch.Generator objects, one per image; for seeds use "
                        "gmem_explore.sampling.make_generators(seeds, device)")

    if fast is None:
        fast = noise.device.type == "cuda" and fast_path.supports(model)
    if fast is not False:
        return fast_path.sample_fast(model, noise, snippets, method, steps, generators, guidance, guidance_interval,
                                     callback, options=FastOptions.from_fast(fast), report=fast_report)

    return sample_reference(model, noise, snippets, method, steps, generators, guidance, guidance_interval, callback,
                            state_dtype)
