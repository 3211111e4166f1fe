"""Where a fast-path step's time goes on one GPU, and what the next speed-ups could buy (issue 5's 11 images/s).

    python benchmarks/gpu_profile.py --out benchmarks/results     # about 1.5 minutes on one H100
    python benchmarks/gpu_profile.py --smoke --out /tmp/x         # tiny model on the CPU: checks the script runs

Three parts (--parts), written to <out>/gpu_profile_<card>[_<variant>].json and .md:
1. a torch.profiler trace of sampler steps (fast path, compiled; bf16 or --variant, e.g. fp8+mk, as in
   gpu_sampler.py) at --batch, summed by kernel family:
   matrix products (cuBLAS/CUTLASS), attention, Triton (inductor's fused element-wise kernels), other;
2. matrix products at the SiT-XL/2 shapes (rows = batch x 256 tokens): bf16 (nn.functional.linear), bf16 with
   cuBLASLt's tanh-GELU epilogue for fc1 (torch._addmm_activation, the same GELU as SiT's MLP), and FP8 e4m3
   with row-wise scales (torch._scaled_mm, also with fast accumulation), with the FP8 result's relative error
   against fp32 on LayerNorm'd data;
3. scaled_dot_product_attention at head width 72 with each backend (flash, memory-efficient, cuDNN).
Step-time arithmetic for the target: 11 images/s at 250 steps and batch 256 is 93 ms per step.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gmem_explore.models.sit import build_model, model_config  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402
from gmem_explore.sampling import initial_noise, make_generators, sample  # noqa: E402
from gpu_sampler import VARIANT_HELP, card_name, parse_variant, randomize  # noqa: E402  (same folder)

FAMILIES = [("attention", r"flash|fmha|attention|cudnn|sdpa"), ("matmul", r"gemm|sm90|cutlass|nvjet|cublas|xmma"),
            ("triton", r"triton"), ("other", r".")]


def family(name: str) -> str:
    low = name.lower()
    return next(f for f, pattern in FAMILIES if re.search(pattern, low))


def bench(fn, cuda: bool) -> float:
    """Median milliseconds (events via triton.testing.do_bench on CUDA; host clock on the CPU)."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    start = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - start) / 3 * 1e3


def profile_steps(args, device, cfg) -> dict:
    with torch.device(device):
        net = build_model(**cfg.to_dict()).eval().requires_grad_(False)
    randomize(net)
    n = args.batch
    gens = make_generators(range(n), device)
    noise = initial_noise(gens, (cfg.in_channels, cfg.input_size, cfg.input_size), device)
    g = torch.Generator(device=device).manual_seed(1234)
    snippets = F.normalize(torch.randn(n, cfg.snippet_dim, device=device, generator=g), dim=1)
    start = time.perf_counter()
    options = parse_variant(args.variant)
    steps = args.profile_steps
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    sample(net, noise, snippets, "sde", 3, gens, fast=options)  # compiles for this batch
    warm = time.perf_counter() - start
    with torch.profiler.profile(activities=activities) as prof:
        sample(net, noise, snippets, "sde", steps, gens, fast=options)
        if device == "cuda":
            torch.cuda.synchronize()
    kernels = defaultdict(float)
    for e in prof.key_averages():
        if device == "cuda":  # kernels only: an aten op's "self device time" is its kernels' time again
            us = e.self_device_time_total if e.device_type != torch.autograd.DeviceType.CPU else 0.0
        else:
            us = e.self_cpu_time_total if e.key.startswith("aten::") else 0.0
        if us > 0:
            kernels[e.key] += us
    total = sum(kernels.values())
    by_family = defaultdict(float)
    for name, us in kernels.items():
        by_family[family(name)] += us
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    ms_per_step = total / 1e3 / steps
    return {"batch": n, "variant": args.variant, "profiled_steps": steps, "compile_seconds": round(warm, 1), "device_ms_per_step": round(ms_per_step, 2),
            "images_per_s_implied": round(n / (ms_per_step * 250 / 1e3), 3) if ms_per_step else None,
            "families_ms_per_step": {k: round(v / 1e3 / steps, 2) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms_per_step": [[k[:120], round(v / 1e3 / steps, 3)] for k, v in top]}


def matmuls(args, device, cfg) -> list[dict]:
    cuda = device == "cuda"
    d, rows = cfg.hidden_size, args.batch * cfg.num_tokens
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, int(d * cfg.mlp_ratio)), "fc2": (int(d * cfg.mlp_ratio), d)}
    out = []
    for name, (k, n) in shapes.items():
        x = F.layer_norm(torch.randn(rows, k, device=device), (k,)).to(dtype)
        w = (torch.randn(n, k, device=device) * k ** -0.5).to(dtype)
        b = torch.randn(n, device=device).to(dtype) * 0.02
        flop = 2 * rows * k * n
        row = {"name": name, "m": rows, "k": k, "n": n}
        row["bf16_ms"] = bench(lambda: F.linear(x, w, b), cuda)
        row["bf16_tflops"] = round(flop / row["bf16_ms"] / 1e9, 1)
        if name == "fc1":
            row["bf16_then_gelu_ms"] = bench(lambda: F.gelu(F.linear(x, w, b), approximate="tanh"), cuda)
            if cuda:
                row["bf16_gelu_epilogue_ms"] = bench(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), cuda)
                ref = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
                got = torch._addmm_activation(b, x, w.t(), use_gelu=True).float()
                row["gelu_epilogue_rel_err"] = float((got - ref).norm() / ref.norm())
        if cuda and hasattr(torch, "_scaled_mm"):
            try:
                e4m3 = torch.float8_e4m3fn
                fmax = torch.finfo(e4m3).max
                sx = (x.float().abs().amax(dim=1, keepdim=True) / fmax).clamp(min=1e-12)
                sw = (w.float().abs().amax(dim=1, keepdim=True) / fmax).clamp(min=1e-12)
                x8, w8 = (x.float() / sx).to(e4m3), (w.float() / sw).to(e4m3)

                def fp8():
                    return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.t(), bias=b, out_dtype=torch.bfloat16)

                def fp8_with_quant():  # the activation's scale and cast count too: they are paid every call
                    s = (x.float().abs().amax(dim=1, keepdim=True) / fmax).clamp(min=1e-12)
                    return torch._scaled_mm((x / s).to(e4m3), w8.t(), scale_a=s, scale_b=sw.t(), bias=b,
                                            out_dtype=torch.bfloat16)

                def fp8_fast_accum():
                    return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw.t(), bias=b, out_dtype=torch.bfloat16,
                                            use_fast_accum=True)

                row["fp8_rowwise_ms"] = bench(fp8, cuda)
                row["fp8_rowwise_tflops"] = round(flop / row["fp8_rowwise_ms"] / 1e9, 1)
                row["fp8_fast_accum_ms"] = bench(fp8_fast_accum, cuda)
                row["fp8_with_activation_quant_ms"] = bench(fp8_with_quant, cuda)
                ref = F.linear(x.float(), w.float(), b.float())
                row["fp8_rel_err"] = float((fp8().float() - ref).norm() / ref.norm())
                row["fp8_fast_accum_rel_err"] = float((fp8_fast_accum().float() - ref).norm() / ref.norm())
                row["bf16_rel_err"] = float((F.linear(x, w, b).float() - ref).norm() / ref.norm())
            except Exception as e:  # keep the other numbers
                row["fp8_error"] = f"{type(e).__name__}: {e}"[:300]
        out.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        print(out[-1], flush=True)
    return out


def attention(args, device, cfg) -> dict:
    cuda = device == "cuda"
    heads, width = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    dtype = torch.bfloat16 if cuda else torch.float32
    q, k, v = (torch.randn(args.batch, heads, cfg.num_tokens, width, device=device, dtype=dtype) for _ in range(3))
    flop = 4 * args.batch * heads * cfg.num_tokens ** 2 * width
    result = {"shape": [args.batch, heads, cfg.num_tokens, width]}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None), "math": SDPBackend.MATH}
    for name, backend in backends.items():
        try:
            if backend is None and name != "default":
                continue
            if backend is None:
                ms = bench(lambda: F.scaled_dot_product_attention(q, k, v), cuda)
            else:
                def run(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v)
                ms = bench(run, cuda)
            result[name] = {"ms": round(ms, 4), "tflops": round(flop / ms / 1e9, 1)}
        except Exception as e:
            result[name] = f"{type(e).__name__}: {e}"[:200]
    print(result, flush=True)
    return result


def markdown(r: dict) -> str:
    p = r.get("profile", {})
    lines = [f"# Where a fast-path step goes: {r['card']} (SiT-XL/2 at 256 px, batch {r['batch']}, torch {r['torch']})", "",
             "Target: 11 images/s at 250 steps and batch 256 = 93 ms per step.", ""]
    if p:
        lines += [f"Variant {p.get('variant', p.get('precision', 'bf16'))}. Profiled {p['profiled_steps']} steps: {p['device_ms_per_step']} ms of device time per step "
                  f"(implies {p['images_per_s_implied']} images/s); compile {p['compile_seconds']} s.", "",
                  "| kernel family | ms per step |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in p["families_ms_per_step"].items()]
        lines += ["", "| top kernels | ms per step |", "|---|---|"]
        lines += [f"| `{k[:90]}` | {v} |" for k, v in p["top_kernels_ms_per_step"][:15]]
    if r.get("matmuls"):
        lines += ["", "| matmul | m x k x n | bf16 ms | bf16 TFLOP/s | fp8 ms (+quant) | fp8 TFLOP/s | fp8 rel err | notes |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in r["matmuls"]:
            note = ""
            if "bf16_gelu_epilogue_ms" in m:
                note = f"GELU separate {m['bf16_then_gelu_ms']} ms, in epilogue {m['bf16_gelu_epilogue_ms']} ms; "
            if "fp8_fast_accum_ms" in m:
                note += f"fp8 fast accumulation {m['fp8_fast_accum_ms']} ms, rel err {m['fp8_fast_accum_rel_err']}"
            lines.append(f"| {m['name']} | {m['m']}x{m['k']}x{m['n']} | {m['bf16_ms']} | {m['bf16_tflops']} | "
                         f"{m.get('fp8_rowwise_ms', '')} ({m.get('fp8_with_activation_quant_ms', '')}) | "
                         f"{m.get('fp8_rowwise_tflops', '')} | {m.get('fp8_rel_err', m.get('fp8_error', ''))} | {note} |")
    if r.get("attention"):
        lines += ["", f"Attention {r['attention']['shape']}: " + ", ".join(
            f"{k} {v['ms']} ms ({v['tflops']} TFLOP/s)" if isinstance(v, dict) else f"{k}: {v}"
            for k, v in r["attention"].items() if k != "shape")]
    for name, err in r.get("errors", {}).items():
        lines.append(f"- {name} failed: {err}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--variant", default="bf16", help="fast-path variant to profile: " + VARIANT_HELP)
    p.add_argument("--parts", default="profile,matmuls,attention", help="which parts to run (comma-separated)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script runs")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit("No CUDA device here: run with --smoke for the CPU check")
    device = "cuda" if cuda else "cpu"
    if args.smoke:
        args.batch, args.profile_steps = 4, 2
        cfg = model_config(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2,
                           snippet_dim=16, encoder_depth=1, projector_dim=32, repa_dim=16)
        card = "cpu-smoke"
    else:
        cfg = model_config("SiT-XL/2", input_size=32)
        card = card_name()
    parse_variant(args.variant)  # refuse a bad variant before any work
    if args.variant != "bf16":
        card += "_" + args.variant.replace("+", "_")
    parts = set(filter(None, args.parts.split(",")))
    r = {"card": card, "torch": torch.__version__, "batch": args.batch, "errors": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("profile", profile_steps), ("matmuls", matmuls), ("attention", attention)):
        if name not in parts:
            continue
        try:
            r[name] = fn(args, device, cfg)
        except Exception as e:
            r["errors"][name] = f"{type(e).__name__}: {e}"[:300]
            print(f"!! {name}: {r['errors'][name]}", flush=True)
        write_bytes_atomic(out / f"gpu_profile_{card}.json", json.dumps(r, indent=1).encode())
        write_bytes_atomic(out / f"gpu_profile_{card}.md", markdown(r).encode())
    print(markdown(r), flush=True)
    return r


if __name__ == "__main__":
    main()
