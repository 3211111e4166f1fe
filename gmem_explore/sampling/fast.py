"""The fast sampling path: the same samplers and the same images as sampling.sample(), less work per step.

What it does differently from the reference loop (each item is plain PyTorch, so the maths runs and is tested
on the CPU; the CUDA-only parts are switched on by the device):
- Conditioning up front: c = t_embedder(t) + condition_projection(snippet) and every block's adaLN modulation
  depend only on t and the snippet, so they are computed for all steps in a few large matrix products (in
  chunks that fit `modulation_budget` bytes) instead of 29 small ones per step.
- Precision "bf16": a cached bf16 copy of the network (fused attention via scaled_dot_product_attention, head
  width 72 on XL) with a float32 sampler state; precision "fp32": the network as given, float32 state. fp32
  matches the float64 reference within 1e-4 relative L2; bf16 within 2% (tests/test_fast.py, the benchmarks).
  "fp8" / "fp8-mlp", only when asked for: the bf16 copy with e4m3 block products (fp8.py): 10.6 images/s at batch
  256 on an H100 against bf16's 8.1, but up to 7.9% off the reference on a trained model (see FastOptions).
- No host synchronisation inside the loop: the time grid is Python floats, the per-step coefficients a
  device tensor built once, the SDE noise drawn up front from each image's generator exactly as the reference
  does (so the same seed gives the same image at any batch size: exactly on the CPU; on CUDA within 0.24% relative
  L2 between batch 4 and 256, measured on an H100, as cuBLAS picks kernels by shape).
- Guidance doubles the batch only on the steps where it is active.
- Each block's closing residual add is deferred into the next block (block_forward's carry), so that a compiled
  block starts with it in the kernel of its first LayerNorm: one pass over the hidden state fewer per block.
- On CUDA: torch.compile of one step (network + sampler update fused; eager if compile is unavailable) and
  CUDA graphs for small fixed batches (the live case: 4 images), one graph per step kind.

Both networks: GMem v1's SiT (block_forward here) and GMem v2's LightningDiT (fast_lightningdit.block_forward:
RMSNorm, RoPE, SwiGLU); every method of grids.py, time-shifted grids included. GMem v2's stochastic Heun
("sde-heun") adds each step's noise before the step (in the loop, one element-wise op outside the compiled step),
then runs Heun's two evaluations as "predict" and "correct" steps like the ODE's.

Entry points: `iter_fast(model, noise, snippets, ..., options=FastOptions(...), report=...)` (a generator of
steps) and `sample_fast` (it run to its end), reached through `sampling.iter_sample` / `sampling.sample(...,
fast=True or FastOptions(...))` (the default on CUDA); `report` gets a FastRun record of which optimisations
actually ran. This file holds the step (one network evaluation fused with the sampler update), its
compilation and the loop; the options and the record live in fast_options.py, the network copy and the precomputed
modulation in fast_conditioning.py, the CUDA graphs in fast_graphs.py (their names are importable from here too).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import warnings
import weakref
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from . import fast_lightningdit, fp8
from .fast_conditioning import Modulation, _fingerprint, network_for
from .fast_graphs import GraphedSteps, graphs_possible
from .fast_options import FP8_PRECISIONS, PRECISIONS, FastOptions, FastRun, resolve_precision
from .fused_ops import linear_gelu
from ..models.sit import GMemSiT, modulate
from .grids import time_grid
from .noise import draw_sde_noise
from .solvers import StepInfo, run_to_end

__all__ = ["PRECISIONS", "FastOptions", "FastRun", "check_model", "iter_fast", "resolve_precision", "sample_fast",
           "supports"]
DEFAULTS = FastOptions()


FAST_METHODS = ("sde", "euler", "heun", "sde-heun")  # the methods _plan writes as fused steps (any time shift)


def handles(settings) -> bool:
    """Whether the fast path runs these sampler settings (a SamplerSettings): every method and grid of grids.py."""
    return settings.method in FAST_METHODS


def supports(model) -> bool:
    """The fast path needs a network whose layout it knows: GMemSiT (v1) or LightningDiT (v2); other callables use
    the reference loop."""
    return isinstance(model, GMemSiT) or fast_lightningdit.supports(model)


def check_model(model, precision: str | None) -> None:
    """A TypeError for a model the fast path cannot run, a ValueError for a precision it does not offer for it."""
    if not supports(model):
        raise TypeError(f"the fast path needs a GMemSiT (v1) or LightningDiT (v2) model; got {type(model).__name__} "
                        f"(use fast=False)")
    if precision in FP8_PRECISIONS and not isinstance(model, GMemSiT):
        raise ValueError(f"precision {precision!r} (FP8 products) is offered for SiT models only, where its error was "
                         f"measured; run {type(model).__name__} with fast='bf16' or 'fp32'")


# ---- one network evaluation and one sampler update -----------------------------------------------------------
def linear(layer, x: torch.Tensor, options: FastOptions) -> torch.Tensor:
    """layer(x); an FP8 product where the layer has FP8 weights (fp8.linear), scaled as the options say."""
    return fp8.linear(layer, x, options.fp8_static_scales, options.fp8_fast_accum)


def attention(attn, x: torch.Tensor, options: FastOptions) -> torch.Tensor:
    """model.Attention.forward with its two products through fp8.linear (plain products without FP8 weights)."""
    n, tokens, dim = x.shape
    q, k, v = linear(attn.qkv, x, options).reshape(n, tokens, 3, attn.heads, dim // attn.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return linear(attn.proj, out.transpose(1, 2).reshape(n, tokens, dim), options)


def block_forward(block, h: torch.Tensor, mod: torch.Tensor, carry: tuple, options: FastOptions = DEFAULTS) -> tuple:
    """model.SiTBlock.forward with its adaLN modulation given and its closing residual deferred (same maths; tests
    compare the two): returns (h, carry) where the block's output is h + carry[0] * carry[1], and adds the previous
    block's carry first. The add then sits in the same compiled kernel as this block's first LayerNorm, which reads
    h once instead of a separate add writing it and the LayerNorm reading it again (151 MB per block at batch 256
    on XL, with persistent reductions; see FastOptions.inductor). The first block gets a zero carry (adds exactly 0).
    Compiled, the step is specialised on the option fields it reads (fused_gelu, fp8_*), not on the options object."""
    gate_prev, out_prev = carry
    h = h + gate_prev.unsqueeze(1) * out_prev
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
    h = h + gate_a.unsqueeze(1) * attention(block.attn, modulate(block.norm1(h), shift_a, scale_a), options)
    y = modulate(block.norm2(h), shift_m, scale_m)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    if options.fused_gelu and not hasattr(fc1, "fp8_weight"):
        y = linear_gelu(y, fc1.weight, fc1.bias)
    else:  # the GELU then fuses with fc2's activation quantisation (FP8) in one kernel
        y = F.gelu(linear(fc1, y, options), approximate="tanh")
    return h, (gate_m, linear(fc2, y, options))


def zero_carry(h: torch.Tensor, mod: torch.Tensor) -> tuple:
    """The first block's carry: a zero gate and zero product, laid out as the later blocks' carries are (the gate a
    strided slice of a modulation row, the last of its 6 chunks, or 4 without adaLN shifts; the product a row-major
    matrix product; not zeros_like(h): the patch embedding leaves h transposed in memory). Another stride, or inputs
    that alias, would make dynamo compile the block a second time (tests/test_fast.py counts the graphs)."""
    chunks = mod.shape[-1] // h.shape[-1]
    return mod.new_zeros(mod.shape).chunk(chunks, dim=-1)[-1], h.new_zeros(h.shape)


def finish(net, h, carry, final, x_in, x_base, v_prev, eps, coef):
    """The last block's deferred residual (h + carry[0] * carry[1]), final layer, guidance combination and
    sampler update: out = a x_base + b v + c v_prev + s eps.

    coef = (a, b, c, s, t, guidance) as a float32 tensor, so one compiled/graphed step serves every step;
    also returns v and the denoised estimate x_in - t v. Guided when h holds twice the batch (cond, then null).
    v is the network's own output: for LightningDiT upstream's velocity, -v in our time, which the plan's b, c and t
    account for (fast_lightningdit.VELOCITY_SIGN; the guidance combination is linear, so the sign passes through it).
    """
    a, b, c, s, t, g = coef.unbind()
    h = h + carry[0].unsqueeze(1) * carry[1]
    shift, scale = final.chunk(2, dim=-1)
    v = net.unpatchify(net.final_layer.linear(modulate(net.final_layer.norm_final(h), shift, scale))).float()
    if v.shape[0] == 2 * x_in.shape[0]:
        cond, uncond = v.chunk(2)
        v = uncond + g * (cond - uncond)
    out = a * x_base + b * v
    if v_prev is not None:
        out = out + c * v_prev
    if eps is not None:
        out = out + s * eps
    return out, v, x_in - t * v


_compiled: dict = {}  # (block, inductor options) -> the compiled block and tail, shared by every network (regional)


def compiled_functions(inductor: tuple = (), block=block_forward):
    """(block, finish) compiled once per process, block function (SiT's or LightningDiT's) and set of inductor
    options (FastOptions.inductor's sorted pairs), or None where torch.compile cannot run here."""
    key = tuple(sorted(dict(inductor).items()))
    cache_key = (block, key)
    if cache_key not in _compiled:
        try:
            import torch._dynamo as dynamo

            for name in ("cache_size_limit", "recompile_limit"):  # batch sizes x step kinds x guidance x options
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
            kw = dict(dynamic=False, options=dict(key) or None)
            _compiled[cache_key] = (torch.compile(block, **kw), torch.compile(finish, **kw))
        except Exception as e:  # pragma: no cover - depends on the installation
            warnings.warn(f"torch.compile unavailable ({e}); running the fast path eagerly")
            _compiled[cache_key] = None
    return _compiled[cache_key]


class Stepper:
    """One sampler step as a function of tensors only: net(x) with given modulation, then the update.

    options.compile=True uses the compiled block (regional compilation: the 28 XL blocks share one compiled kernel
    set, so warm-up stays short) and the compiled tail with the sampler arithmetic fused into it. A LightningDiT runs
    fast_lightningdit.block_forward with its RoPE tables; the rest of the step is the same.
    """

    def __init__(self, net, options: FastOptions = DEFAULTS):
        lightning = fast_lightningdit.supports(net)
        block = fast_lightningdit.block_forward if lightning else block_forward
        self.extra = fast_lightningdit.rope_tables(net) if lightning else ()  # the block's arguments after options
        self.net, self.options, self.block_fn, self.finish_fn, self.compiled = net, options, block, finish, False
        fns = compiled_functions(options.inductor, block) if options.compile else None
        if fns is not None:
            (self.block_fn, self.finish_fn), self.compiled = fns, True

    def __call__(self, x_in, x_base, v_prev, eps, blocks, final, coef):
        net = self.net
        x = torch.cat([x_in, x_in]) if blocks.shape[1] == 2 * x_in.shape[0] else x_in
        h = net.x_embedder(x.to(blocks.dtype)) + net.pos_embed
        carry = zero_carry(h, blocks[0])
        for block, mod in zip(net.blocks, blocks):
            h, carry = self.block_fn(block, h, mod, carry, self.options, *self.extra)
        return self.finish_fn(net, h, carry, final, x_in, x_base, v_prev, eps, coef)


_graphs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # net -> (fingerprint, {key: GraphedSteps})


def runner(net: GMemSiT, options: FastOptions) -> tuple[Stepper, Callable]:
    """(stepper, the function a step calls): the stepper itself, or its CUDA graphs with options.cuda_graphs. Graphs
    are kept per network, so the next live call replays without capturing again, and per (compiled, options): every
    field that changes the step is in the options (one that does not costs at most another capture)."""
    stepper = Stepper(net, options)
    if not options.cuda_graphs:
        return stepper, stepper
    key = _fingerprint(net)  # graphs read weights by address: recapture when the tensors were replaced
    if net not in _graphs or _graphs[net][0] != key:
        _graphs[net] = (key, {})
    graphed = _graphs[net][1].setdefault((stepper.compiled, options), GraphedSteps())
    return stepper, lambda *args: graphed(stepper, *args)


# ---- the sampler ---------------------------------------------------------------------------------------------
class Evaluation(NamedTuple):
    """One network evaluation of the plan. Pure Python floats: building and reading it never syncs the device."""

    k: int  # time index: the modulation of grid[k] (and, noise_first or kind "sde", the noise drawn for step k)
    kind: str  # "euler", "sde", "last" (one update), "predict" / "correct" (Heun's two halves)
    guided: bool
    coef: tuple  # (a, b, c, s, t): out = a x_base + b v + c v_prev + s eps; denoised = x_in - t v (finish)
    noise_first: float = 0.0  # sde-heun: x += noise_first * eps before this evaluation


def _plan(method: str, grid: Sequence[float], guidance: float, interval) -> list[Evaluation]:
    """The evaluations of a run on `grid` (time_grid's values as floats: steps + 1 of them)."""
    lo, hi = interval
    guided = lambda t: guidance != 1.0 and lo <= t <= hi  # noqa: E731  (the reference's rule)
    steps, plan = len(grid) - 1, []
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t
        if method == "sde":  # x + ((2 - t) v + x) dt + sqrt(2 t |dt|) eps; the last step has no noise
            s = (2.0 * t * abs(dt)) ** 0.5 if i < steps - 1 else 0.0
            plan.append(Evaluation(i, "sde" if s else "last", guided(t), (1.0 + dt, (2.0 - t) * dt, 0.0, s, t)))
        elif method == "sde-heun" and i < steps - 1:
            # x_hat = x + sqrt(2 t |dt|) eps, then Heun on the drift (2 - t) v + x from x_hat: the predictor
            # x_p = (1 + dt) x_hat + (2 - t) dt v, the corrector x_hat + dt/2 (drift(x_hat) + drift(x_p)), which with
            # x_p substituted is (1 + dt + dt^2/2) x_hat + dt/2 (2 - t)(1 + dt) v + dt/2 (2 - t_next) v_next
            plan.append(Evaluation(i, "predict", guided(t), (1.0 + dt, (2.0 - t) * dt, 0.0, 0.0, t),
                                   (2.0 * t * abs(dt)) ** 0.5))
            plan.append(Evaluation(i + 1, "correct", guided(t_next), (
                1.0 + dt + 0.5 * dt * dt, 0.5 * dt * (2.0 - t_next), 0.5 * dt * (2.0 - t) * (1.0 + dt), 0.0, t_next)))
        elif method == "sde-heun":  # the last step (0.004 -> 0): one deterministic drift step, upstream's "Mean"
            plan.append(Evaluation(i, "last", guided(t), (1.0 + dt, (2.0 - t) * dt, 0.0, 0.0, t)))
        elif method == "heun" and i < steps - 1:  # predictor x + dt v, then x + dt/2 (v + v_next)
            plan.append(Evaluation(i, "predict", guided(t), (1.0, dt, 0.0, 0.0, t)))
            plan.append(Evaluation(i + 1, "correct", guided(t_next), (1.0, 0.5 * dt, 0.5 * dt, 0.0, t_next)))
        else:
            plan.append(Evaluation(i, "euler", guided(t), (1.0, dt, 0.0, 0.0, t)))
    return plan


# One fast CUDA run at a time per process: the captured graphs and their fixed input/output buffers are shared, so
# two threads (an app with --concurrency 2, or a stopped run finishing its step beside the next) would overwrite
# each other's buffers. One run already fills the GPU; CPU runs (no graphs) are not serialised.
_CUDA_RUNS = threading.RLock()


def one_cuda_run_at_a_time(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def serialised(model, noise, *args, **kwargs):
        if noise.device.type != "cuda":
            return fn(model, noise, *args, **kwargs)
        with _CUDA_RUNS:
            return fn(model, noise, *args, **kwargs)
    return serialised


@one_cuda_run_at_a_time
def sample_fast(model: GMemSiT, noise: torch.Tensor, snippets: torch.Tensor, method: str = "sde", steps: int = 250,
                generators: Sequence[torch.Generator] | None = None, guidance: float = 1.0,
                guidance_interval: tuple[float, float] = (0.0, 1.0),
                callback: Callable[[StepInfo], None] | None = None, *, options: FastOptions = DEFAULTS,
                report: Callable[[FastRun], None] | None = None, time_shift: float = 1.0) -> torch.Tensor:
    """iter_fast run to its end, calling callback(StepInfo) after every step; returns the final state in float32."""
    return run_to_end(iter_fast(model, noise, snippets, method, steps, generators, guidance, guidance_interval,
                                options=options, report=report, time_shift=time_shift), callback)


@torch.no_grad()
def iter_fast(
    model: GMemSiT,
    noise: torch.Tensor,
    snippets: torch.Tensor,
    method: str = "sde",
    steps: int = 250,
    generators: Sequence[torch.Generator] | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    *,
    options: FastOptions = DEFAULTS,
    report: Callable[[FastRun], None] | None = None,
    time_shift: float = 1.0,
):
    """sampling.iter_sample() on the fast path (its settings are checked there): a generator of a StepInfo after
    every step, then the final state in float32. Closing it stops it after the step under way.

    model: a GMemSiT or a LightningDiT. options: precision, compilation, CUDA graphs, FP8 settings (FastOptions; the
    defaults decide by device and batch). report: called once when the run ends, with a FastRun record of what
    actually ran. time_shift: the ODE grid's shift (grids.time_grid).
    On CUDA each step holds the one-run lock (_CUDA_RUNS) while it fills and reads the graphs' buffers, not the whole
    run: a consumer may take its time between steps (and resume in another thread, as gradio does).
    """
    check_model(model, options.precision)
    device, n = noise.device, noise.shape[0]
    model.check_inputs(noise, torch.zeros(n, device=device), snippets)
    options = options.resolve(device, n, graphs_possible(device))
    lightning = fast_lightningdit.supports(model)
    dtype = next(model.parameters()).dtype if options.precision == "fp32" else torch.bfloat16
    net = network_for(model, dtype, fp8.LAYER_SETS.get(options.precision, ()))
    switch_at = options.fp8_steps  # None unless FP8: from this step on, the plain bf16 copy's products
    plain = network_for(model, dtype) if switch_at is not None else None

    grid = time_grid(method, steps, time_shift).tolist()
    plan = _plan(method, grid, guidance, guidance_interval)
    mods = Modulation(model, snippets, grid[:steps], net, options.modulation_budget,
                      fast_lightningdit.network_time if lightning else None)
    sign = fast_lightningdit.VELOCITY_SIGN if lightning else 1.0  # on v's coefficients b, c and t (see finish)
    coefs = torch.tensor([(a, sign * b, sign * c, s, sign * t, guidance) for a, b, c, s, t in (e.coef for e in plan)],
                         dtype=torch.float32).to(device, non_blocking=True)

    # the reference's draws, laid out (step, image, ...) so that each step's slice is contiguous
    noisy = method in ("sde", "sde-heun")
    sde_noise = draw_sde_noise(generators, n, steps, noise.shape[1:], device, dim=1) if noisy else None

    stepper, run = runner(net, options)
    graphs, fallback = options.cuda_graphs, None

    x = noise.float()
    x_pred = v_pred = denoised_pred = None
    one_run = _CUDA_RUNS if device.type == "cuda" else contextlib.nullcontext()
    for j, (k, kind, guided, _, noise_first) in enumerate(plan):
        with one_run:
            if k == switch_at and kind != "correct":  # a Heun corrector finishes its step on the predictor's network
                net, (stepper, run) = plain, runner(plain, stepper.options)
            blocks, final = mods.get(k, uncond=guided)
            if noise_first:  # sde-heun: the step's noise before its evaluations, x_hat = x + sqrt(2 t |dt|) eps
                x = torch.add(x, sde_noise[k], alpha=noise_first)
            # The last SDE step adds 0 * eps (s = 0): exactly the reference's noiseless step, one compiled variant.
            eps = sde_noise[min(k, steps - 2)] if method == "sde" and sde_noise is not None else None
            args = (x_pred, x, v_pred) if kind == "correct" else (x, x, None)
            try:
                out, v, denoised = run(*args, eps, blocks, final, coefs[j])
            except Exception as e:
                if not graphs and not stepper.compiled:
                    raise
                warnings.warn(f"compiled/graphed step failed ({type(e).__name__}: {e}); continuing eagerly")
                _graphs.pop(net, None)
                eager = dataclasses.replace(stepper.options, compile=False, cuda_graphs=False)
                (stepper, run), graphs, fallback = runner(net, eager), False, f"{type(e).__name__}: {e}"
                out, v, denoised = run(*args, eps, blocks, final, coefs[j])
            if kind == "predict":  # keep the predictor's results: graph outputs are overwritten by the next replay
                x_pred, v_pred, denoised_pred = ((out.clone(), v.clone(), denoised.clone()) if graphs
                                                 else (out, v, denoised))
                continue
            x = out.clone() if graphs else out
            if kind == "correct":
                denoised = denoised_pred
            denoised = denoised.clone() if graphs else denoised
        i = k - 1 if kind == "correct" else k
        yield StepInfo(i + 1, steps, grid[i + 1], x, denoised)
    if report is not None:
        report(FastRun(options, stepper.compiled, graphs, mods.chunk, len(plan), sum(e.guided for e in plan), fallback))
    yield x
