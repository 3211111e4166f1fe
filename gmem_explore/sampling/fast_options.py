"""What the fast sampling path is told (FastOptions) and what it reports back (FastRun), both immutable.

Options travel as an argument: `sample(..., fast=FastOptions(precision="fp8", fp8_fast_accum=False))`, or
`sample_fast(..., options=...)`; fast=True / "bf16" / ... are shorthands for FastOptions() / FastOptions(precision=...).
Everything that changes what a step computes is a field here, so the caches keyed on options (CUDA graphs, compiled
code) can never replay a step that was built for other settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

PRECISIONS = ("bf16", "fp32", "fp8", "fp8-mlp")  # fp8*: e4m3 block products (fp8.py)
FP8_PRECISIONS = ("fp8", "fp8-mlp")
DEFAULT_MODULATION_BUDGET = 1 << 30  # bytes of precomputed adaLN modulation held at once (chunked above it)


@dataclass(frozen=True)
class FastOptions:
    """How the fast path runs. None means "where it helps": decided per call from the device and the batch.

    precision: "bf16" (default on CUDA), "fp32" (exact mode, default on the CPU), "fp8" (all four block products in
        e4m3) or "fp8-mlp" (fc1 and fc2 only); the FP8 ones for SiT models only (fast.check_model). FP8 is 1.3x faster on an H100 (10.6 against 8.1 images/s at batch
        256) but up to 7.9% off the reference on a trained model, past the 2% "same images" allows: never a default.
    compile: torch.compile the step (regional: one block, shared by all blocks, and the tail); None: on CUDA.
    cuda_graphs: one CUDA graph per step kind; None: for batches up to graph_max_batch, where launch overhead
        dominates (the live case of 4 images); True: at any batch size; graphs need CUDA.
    inductor: inductor options for the compiled step (a dict, kept as sorted pairs). Candidate:
        {"triton.multi_kernel": 1}: inductor keeps a row in registers ("persistent reduction") only up to 1,024
        elements; XL's LayerNorm rows have 1,152, so each LayerNorm kernel reads its input twice (14.2 ms of a
        131 ms step on an H100) and FP8's per-token scale needs a third pass. multi_kernel raises that limit 16-fold
        and times both variants on the first call (benchmarks/gpu_sampler.py "+mk").
    fused_gelu: fc1 + GELU as one op (fused_ops.linear_gelu: 18.9 ms of GELU kernel per 131 ms step saved on an
        H100); False: two ops, for comparison.
    fp8_static_scales: one calibrated input scale per layer (fp8.calibrate) instead of one per token: 9.0 -> 10.6
        images/s at batch 256 on an H100, error 0.92% on random weights.
    fp8_fast_accum: let Hopper's FP8 tensor cores skip promoting partial sums to fp32: 8.35 -> 9.01 images/s on an
        H100, final-latent error 0.900% -> 0.901%. The CPU ignores it.
    fp8_steps: with an FP8 precision, FP8 products for the first fp8_steps sampler steps only, the bf16 copy's
        after (early steps start from noise, so their rounding may matter less); None: every step.
    modulation_budget: bytes of precomputed adaLN modulation held at once (computed in chunks of steps above it).
    """

    precision: str | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    graph_max_batch: int = 16
    inductor: tuple = ()
    fused_gelu: bool = True
    fp8_static_scales: bool = True
    fp8_fast_accum: bool = True
    fp8_steps: int | None = None
    modulation_budget: int = DEFAULT_MODULATION_BUDGET

    def __post_init__(self):
        if self.precision is not None:
            check_precision(self.precision)
        for name in ("compile", "cuda_graphs"):
            if getattr(self, name) not in (None, True, False):
                raise TypeError(f"{name} must be None (where it helps), True or False; got {getattr(self, name)!r}")
        for name in ("fused_gelu", "fp8_static_scales", "fp8_fast_accum"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        for name, least in (("graph_max_batch", 0), ("modulation_budget", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
        if self.fp8_steps is not None:
            if isinstance(self.fp8_steps, bool) or not isinstance(self.fp8_steps, int) or self.fp8_steps < 0:
                raise ValueError(f"fp8_steps must be a step count >= 0 or None (every step); got {self.fp8_steps!r}")
            if self.precision not in FP8_PRECISIONS:
                raise ValueError(f"fp8_steps needs an FP8 precision {FP8_PRECISIONS}; got precision={self.precision!r}")
        inductor = dict(self.inductor)  # a dict or pairs -> sorted pairs: hashable, one key per option set
        object.__setattr__(self, "inductor", tuple(sorted(inductor.items())))

    @classmethod
    def from_fast(cls, fast) -> "FastOptions":
        """sample()'s `fast` argument when it asks for the fast path: True, a precision name, or FastOptions."""
        if isinstance(fast, cls):
            return fast
        if fast is True:
            return cls()
        if isinstance(fast, str):
            return cls(precision=fast)
        raise TypeError(f"fast must be None, True, False, a precision {PRECISIONS} or FastOptions; got {fast!r}")

    def resolve(self, device: torch.device, batch: int, graphs_possible: bool) -> "FastOptions":
        """These options with every None decided for this call: precision, compile and cuda_graphs concrete."""
        on_cuda = device.type == "cuda"
        graphs = self.cuda_graphs if self.cuda_graphs is not None else batch <= self.graph_max_batch
        return dataclasses.replace(self, precision=resolve_precision(self.precision, device),
                                   compile=on_cuda if self.compile is None else self.compile,
                                   cuda_graphs=bool(graphs_possible and graphs))

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "inductor": dict(self.inductor)}


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The asked-for precision, checked; None: bf16 on CUDA, fp32 on the CPU (no fast bf16 instructions there).
    Not FP8, although it is 1.3x faster on an H100 (10.6 against 8.1 images/s at batch 256): on a trained model
    its final latents are up to 7.9% off the reference (emoji-32, 250 steps, benchmarks/fp8_error_trained.py),
    past the 2% that "the same images" allows; the 0.92% measured on the H100 was with random weights."""
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    return check_precision(precision)


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    return precision


@dataclass(frozen=True)
class FastRun:
    """What one fast-path call actually ran (sample_fast's `report` gets it when the run ends).

    options: the call's options with precision, compile and cuda_graphs decided (FastOptions.resolve).
    compiled / cuda_graphs: what ran at the end; False after a compiled or graphed step failed and the run went on
    eagerly (then `fallback` says why), or where torch.compile is unavailable.
    """

    options: FastOptions
    compiled: bool
    cuda_graphs: bool
    modulation_chunk: int
    evaluations: int
    guided_evaluations: int
    fallback: str | None = None

    @property
    def precision(self) -> str:
        return self.options.precision

    def as_dict(self) -> dict:
        """JSON-ready (the benchmarks write it next to their timings)."""
        return {"precision": self.precision, "compiled": self.compiled, "cuda_graphs": self.cuda_graphs,
                "modulation_chunk": self.modulation_chunk, "evaluations": self.evaluations,
                "guided_evaluations": self.guided_evaluations, "fallback": self.fallback,
                "options": self.options.as_dict()}
