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
  256 on an H100 against bf16's 8.1, but up to 7.9% off the reference on a trained model (see resolve_precision).
- No host synchronisation inside the loop: the time grid is Python floats, the per-step coefficients a
  device tensor built once, the SDE noise drawn up front from each image's generator exactly as the reference
  does (so the same seed gives the same image at any batch size: exactly on the CPU; on CUDA within 0.24% relative
  L2 between batch 4 and 256, measured on an H100, as cuBLAS picks kernels by shape).
- Guidance doubles the batch only on the steps where it is active.
- Each block's closing residual add is deferred into the next block (block_forward's carry), so that a compiled
  block starts with it in the kernel of its first LayerNorm: one pass over the hidden state fewer per block.
- On CUDA: torch.compile of one step (network + sampler update fused; eager if compile is unavailable) and
  CUDA graphs for small fixed batches (the live case: 4 images), one graph per step kind.

Entry points: `iter_fast(model, noise, snippets, ...)` (a generator of steps) and `sample_fast` (it run to its end),
reached through `sampling.iter_sample` / `sampling.sample(..., fast=True)` (the default on CUDA). `last_run` records which optimisations actually ran (for the benchmarks).
This file holds the step (one network evaluation fused with the sampler update), its compilation and the loop;
the network copy and the precomputed modulation live in fast_conditioning.py, the CUDA graphs in fast_graphs.py
(their names are importable from here too).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import fp8
from .fast_conditioning import DEFAULT_MODULATION_BUDGET, Modulation, _fingerprint, network_for
from .fast_graphs import GraphedSteps, graphs_possible
from .fused_ops import linear_gelu
from ..models.sit import GMemSiT, modulate
from .grids import time_grid
from .noise import draw_sde_noise
from .solvers import StepInfo, run_to_end

PRECISIONS = ("bf16", "fp32", "fp8", "fp8-mlp")  # fp8*: see fp8.py
GRAPH_MAX_BATCH = 16  # CUDA graphs pay off where launch overhead dominates: small, fixed live batches

last_run: dict = {}  # what the latest sample_fast call used: precision, compiled, graphs, chunking
FUSED_GELU = True  # fc1 + GELU as one op (fused_ops.linear_gelu); False: two ops (the benchmark's comparison)
# Inductor options for the compiled step. Candidate, timed by benchmarks/gpu_sampler.py ("+mk" variants) before it
# becomes a default: {"triton.multi_kernel": 1}. Inductor keeps a row in registers ("persistent reduction") only up
# to 1,024 elements; XL's LayerNorm rows have 1,152, so each LayerNorm kernel reads its input twice (the H100
# profile shows `triton_red_...layer_norm` kernels: 14.2 ms of a 131 ms step), and FP8's per-token scale needs a
# third pass. multi_kernel raises that limit 16-fold and times both variants on the first call, keeping the faster.
COMPILE_OPTIONS: dict = {}


def supports(model) -> bool:
    """The fast path needs the GMemSiT layout (blocks with adaLN_modulation); other callables use the reference."""
    return isinstance(model, GMemSiT)


# ---- one network evaluation and one sampler update -----------------------------------------------------------
def attention(attn, x: torch.Tensor) -> torch.Tensor:
    """model.Attention.forward with its two products through fp8.linear (plain products without FP8 weights)."""
    n, tokens, dim = x.shape
    q, k, v = fp8.linear(attn.qkv, x).reshape(n, tokens, 3, attn.heads, dim // attn.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return fp8.linear(attn.proj, out.transpose(1, 2).reshape(n, tokens, dim))


def block_forward(block, h: torch.Tensor, mod: torch.Tensor, carry: tuple) -> tuple:
    """model.SiTBlock.forward with its adaLN modulation given and its closing residual deferred (same maths; tests
    compare the two): returns (h, carry) where the block's output is h + carry[0] * carry[1], and adds the previous
    block's carry first. The add then sits in the same compiled kernel as this block's first LayerNorm, which reads
    h once instead of a separate add writing it and the LayerNorm reading it again (151 MB per block at batch 256
    on XL, with persistent reductions; see COMPILE_OPTIONS). The first block gets a zero carry (adds exactly 0)."""
    gate_prev, out_prev = carry
    h = h + gate_prev.unsqueeze(1) * out_prev
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
    h = h + gate_a.unsqueeze(1) * attention(block.attn, modulate(block.norm1(h), shift_a, scale_a))
    y = modulate(block.norm2(h), shift_m, scale_m)
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    if FUSED_GELU and not hasattr(fc1, "fp8_weight"):
        y = linear_gelu(y, fc1.weight, fc1.bias)
    else:  # the GELU then fuses with fc2's activation quantisation (FP8) in one kernel
        y = F.gelu(fp8.linear(fc1, y), approximate="tanh")
    return h, (gate_m, fp8.linear(fc2, y))


def zero_carry(h: torch.Tensor, mod: torch.Tensor) -> tuple:
    """The first block's carry: a zero gate and zero product, laid out as the later blocks' carries are (the gate a
    strided slice of a modulation row, the product a row-major matrix product; not zeros_like(h): the patch
    embedding leaves h transposed in memory). Another stride, or inputs that alias, would make dynamo compile the
    block a second time (tests/test_fast.py counts the graphs)."""
    return mod.new_zeros(mod.shape).chunk(6, dim=-1)[5], h.new_zeros(h.shape)


def finish(net, h, carry, final, x_in, x_base, v_prev, eps, coef):
    """The last block's deferred residual (h + carry[0] * carry[1]), final layer, guidance combination and
    sampler update: out = a x_base + b v + c v_prev + s eps.

    coef = (a, b, c, s, t, guidance) as a float32 tensor, so one compiled/graphed step serves every step;
    also returns v and the denoised estimate x_in - t v. Guided when h holds twice the batch (cond, then null).
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


_compiled: dict = {}  # options -> the compiled block and tail, shared by every network (regional compilation)


def compiled_functions(options: dict | None = None):
    """(block_forward, finish) compiled once per process and set of inductor `options` (default COMPILE_OPTIONS),
    or None where torch.compile cannot run here."""
    options = dict(COMPILE_OPTIONS if options is None else options)
    key = tuple(sorted(options.items()))
    if key not in _compiled:
        try:
            import torch._dynamo as dynamo

            for name in ("cache_size_limit", "recompile_limit"):  # batch sizes x step kinds x guidance x options
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
            kw = dict(dynamic=False, options=options or None)
            _compiled[key] = (torch.compile(block_forward, **kw), torch.compile(finish, **kw))
        except Exception as e:  # pragma: no cover - depends on the installation
            warnings.warn(f"torch.compile unavailable ({e}); running the fast path eagerly")
            _compiled[key] = None
    return _compiled[key]


class Stepper:
    """One sampler step as a function of tensors only: net(x) with given modulation, then the update.

    compile=True uses the compiled block (regional compilation: the 28 XL blocks share one compiled kernel
    set, so warm-up stays short) and the compiled tail with the sampler arithmetic fused into it.
    """

    def __init__(self, net: GMemSiT, compile: bool = False):
        self.net, self.block_fn, self.finish_fn, self.compiled = net, block_forward, finish, False
        fns = compiled_functions() if compile else None
        if fns is not None:
            (self.block_fn, self.finish_fn), self.compiled = fns, True

    def __call__(self, x_in, x_base, v_prev, eps, blocks, final, coef):
        net = self.net
        x = torch.cat([x_in, x_in]) if blocks.shape[1] == 2 * x_in.shape[0] else x_in
        h = net.x_embedder(x.to(blocks.dtype)) + net.pos_embed
        carry = zero_carry(h, blocks[0])
        for block, mod in zip(net.blocks, blocks):
            h, carry = self.block_fn(block, h, mod, carry)
        return self.finish_fn(net, h, carry, final, x_in, x_base, v_prev, eps, coef)


_graphs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # net -> (fingerprint, {compiled: GraphedSteps})


# ---- the sampler ---------------------------------------------------------------------------------------------
def _plan(method: str, steps: int, guidance: float, interval) -> list[tuple]:
    """Per network evaluation: (time index, kind, guided, a, b, c, s, t). Pure Python floats: no device syncs."""
    grid = time_grid(method, steps).tolist()
    lo, hi = interval
    guided = lambda t: guidance != 1.0 and lo <= t <= hi  # noqa: E731  (the reference's rule)
    plan = []
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t
        if method == "sde":  # x + ((2 - t) v + x) dt + sqrt(2 t |dt|) eps; the last step has no noise
            s = (2.0 * t * abs(dt)) ** 0.5 if i < steps - 1 else 0.0
            plan.append((i, "sde" if s else "last", guided(t), 1.0 + dt, (2.0 - t) * dt, 0.0, s, t))
        elif method == "heun" and i < steps - 1:  # predictor x + dt v, then x + dt/2 (v + v_next)
            plan.append((i, "predict", guided(t), 1.0, dt, 0.0, 0.0, t))
            plan.append((i + 1, "correct", guided(t_next), 1.0, 0.5 * dt, 0.5 * dt, 0.0, t_next))
        else:
            plan.append((i, "euler", guided(t), 1.0, dt, 0.0, 0.0, t))
    return plan


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The asked-for precision, checked; None: bf16 on CUDA, fp32 on the CPU (no fast bf16 instructions there).
    Not FP8, although it is 1.3x faster on an H100 (10.6 against 8.1 images/s at batch 256): on a trained model
    its final latents are up to 7.9% off the reference (emoji-32, 250 steps, benchmarks/fp8_error_trained.py),
    past the 2% that "the same images" allows; the 0.92% measured on the H100 was with random weights."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return precision


# One fast CUDA run at a time per process: the captured graphs, their fixed input/output buffers and last_run are
# shared, so two threads (an app with --concurrency 2, or a stopped run finishing its step beside the next) would
# overwrite each other's buffers. One run already fills the GPU; CPU runs (no graphs) are not serialised.
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
                callback: Callable[[StepInfo], None] | None = None, **options) -> torch.Tensor:
    """iter_fast run to its end, calling callback(StepInfo) after every step; returns the final state in float32."""
    return run_to_end(iter_fast(model, noise, snippets, method, steps, generators, guidance, guidance_interval,
                                **options), callback)


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
    precision: str | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
    modulation_budget: int = DEFAULT_MODULATION_BUDGET,
):
    """sampling.iter_sample() on the fast path (its settings are checked there): a generator of a StepInfo after
    every step, then the final state in float32. Closing it stops it after the step under way.

    precision: "bf16" (default on CUDA), "fp32" (exact mode, default on CPU), "fp8" (all four block products
    in e4m3; faster, less exact, see resolve_precision) or "fp8-mlp" (fc1 and fc2 only), see fp8.py. compile / cuda_graphs: None =
    on where they help (CUDA; graphs for batches up to GRAPH_MAX_BATCH), False = off, True = on if possible.
    On CUDA each step holds the one-run lock (_CUDA_RUNS) while it fills and reads the graphs' buffers, not the whole
    run: a consumer may take its time between steps (and resume in another thread, as gradio does).
    """
    if not supports(model):
        raise TypeError(f"the fast path needs a GMemSiT model; got {type(model).__name__} (use fast=False)")
    device, n = noise.device, noise.shape[0]
    model.check_inputs(noise, torch.zeros(n, device=device), snippets)
    precision = resolve_precision(precision, device)
    dtype = next(model.parameters()).dtype if precision == "fp32" else torch.bfloat16
    net = network_for(model, dtype, fp8.LAYER_SETS.get(precision, ()))

    grid = time_grid(method, steps).tolist()
    plan = _plan(method, steps, guidance, guidance_interval)
    mods = Modulation(model, snippets, grid[:steps], net, modulation_budget)
    coefs = torch.tensor([p[3:] + (guidance,) for p in plan], dtype=torch.float32).to(device, non_blocking=True)

    # the reference's draws, laid out (step, image, ...) so that each step's slice is contiguous
    sde_noise = draw_sde_noise(generators, n, steps, noise.shape[1:], device, dim=1) if method == "sde" else None

    on_cuda = device.type == "cuda"
    stepper = Stepper(net, compile=bool(compile) if compile is not None else on_cuda)
    graphs = bool(graphs_possible(device) and (cuda_graphs or (cuda_graphs is None and n <= GRAPH_MAX_BATCH)))
    run = stepper
    if graphs:  # graphs are kept per network, so the next live call replays without capturing again
        key = _fingerprint(net)  # graphs read weights by address: recapture when the tensors were replaced
        if net not in _graphs or _graphs[net][0] != key:
            _graphs[net] = (key, {})
        variant = (stepper.compiled, FUSED_GELU, fp8.FAST_ACCUM, fp8.STATIC_INPUT_SCALES,
                   tuple(sorted(COMPILE_OPTIONS.items())))
        graphed = _graphs[net][1].setdefault(variant, GraphedSteps())
        run = lambda *args: graphed(stepper, *args)  # noqa: E731
    last_run.clear()
    last_run.update(precision=precision, fused_gelu=FUSED_GELU, fp8_fast_accum=fp8.FAST_ACCUM,
                    fp8_static_input_scales=fp8.STATIC_INPUT_SCALES,
                    compile_options=dict(COMPILE_OPTIONS), compiled=stepper.compiled, cuda_graphs=graphs,
                    modulation_chunk=mods.chunk, evaluations=len(plan), guided_evaluations=sum(p[2] for p in plan))

    x = noise.float()
    x_pred = v_pred = denoised_pred = None
    one_run = _CUDA_RUNS if on_cuda else contextlib.nullcontext()
    for j, (k, kind, guided, *_coef) in enumerate(plan):
        with one_run:
            blocks, final = mods.get(k, uncond=guided)
            # The last SDE step adds 0 * eps (s = 0): exactly the reference's noiseless step, one compiled variant.
            eps = sde_noise[min(k, steps - 2)] if sde_noise is not None else None
            args = (x_pred, x, v_pred) if kind == "correct" else (x, x, None)
            try:
                out, v, denoised = run(*args, eps, blocks, final, coefs[j])
            except Exception as e:
                if not graphs and not stepper.compiled:
                    raise
                warnings.warn(f"compiled/graphed step failed ({type(e).__name__}: {e}); continuing eagerly")
                stepper, graphs = Stepper(net, compile=False), False
                _graphs.pop(net, None)
                run = stepper
                last_run.update(compiled=False, cuda_graphs=False, fallback=f"{type(e).__name__}: {e}")
                out, v, denoised = run(*args, eps, blocks, final, coefs[j])
            if kind == "predict":  # keep the predictor's results: graph outputs are overwritten by the next replay
                x_pred, v_pred, denoised_pred = (out.clone(), v.clone(), denoised.clone()) if graphs else (out, v, denoised)
                continue
            x = out.clone() if graphs else out
            if kind == "correct":
                denoised = denoised_pred
            denoised = denoised.clone() if graphs else denoised
        i = k - 1 if kind == "correct" else k
        yield StepInfo(i + 1, steps, grid[i + 1], x, denoised)
    yield x
