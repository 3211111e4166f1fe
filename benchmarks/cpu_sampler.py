"""The embedded default model makes 16 images on the CPU: the reference sampler against the fast path, same run.

    python benchmarks/cpu_sampler.py                     # GMemPipeline.from_pretrained(), its default settings
    python benchmarks/cpu_sampler.py --standin           # no weights yet: a random model of the default's size

Each mode runs `pipe.generate(16, seeds=range(16))` with the pipeline's default sampler settings; the runs
alternate between modes (so both see the same machine load) and the median of --repeats is reported. Modes:
"reference" (fast=False: float64 state, per-step conditioning) and "fast-fp32" (fast="fp32": conditioning and
adaLN modulation precomputed, float32 state); "fast-bf16" with --bf16 (slow on CPUs without bf16 instructions).
The final latents of each fast mode are compared with the reference's (relative L2 per image, the largest).
Writes benchmarks/results/cpu_sampler.json and .md. Target (issue 5): 16 images in at most 3 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gmem_explore import GMemPipeline, MemoryBank, build_model  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402
from gpu_sampler import relative_l2  # noqa: E402  (benchmarks/ is this script's folder)

TARGET_SECONDS = 3.0
# The default model's size as planned in docs/ENVIRONMENT.md (32x32 pixels, patch 4, width 192, depth 6).
STANDIN = dict(input_size=32, patch_size=4, in_channels=3, hidden_size=192, depth=6, num_heads=6, snippet_dim=768,
               encoder_depth=2, projector_dim=256, repa_dim=768)


def standin_pipeline(steps: int) -> GMemPipeline:
    torch.manual_seed(0)
    model = build_model(**STANDIN)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0.0, 0.02)
    g = torch.Generator().manual_seed(1)
    bank = MemoryBank(torch.randn(64, 768, generator=g), torch.ones(64, dtype=torch.float64),
                      torch.zeros(64, dtype=torch.long), ["all"], torch.zeros(64, 32, 32, 3, dtype=torch.uint8))
    return GMemPipeline(model, bank, sampler={"method": "sde", "steps": steps})


def final_latents(pipe, n, mode):
    """Generate and keep the sampler's final state (the last callback's x) next to the images."""
    kept = {}

    def keep(info, start, total):
        if info.step == info.total:
            kept[start] = info.x.float().clone()

    pipe.generate(n, seeds=range(n), fast=mode, callback=keep)
    return torch.cat([kept[k] for k in sorted(kept)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", default=None, help="checkpoint name or folder (default: the embedded default)")
    p.add_argument("--standin", action="store_true", help="random model of the planned default size (no weights needed)")
    p.add_argument("--steps", type=int, default=None, help="override the checkpoint's default step count")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="also time the bf16 fast path")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.standin:
        pipe, source = standin_pipeline(args.steps or 250), "stand-in: random weights, planned default size"
    else:
        pipe, source = GMemPipeline.from_pretrained(args.model), args.model or "embedded default (emoji-32)"
        if args.steps:
            pipe.sampler["steps"] = args.steps
    settings = dict(pipe.sampler)
    modes = {"reference": False, "fast-fp32": "fp32"} | ({"fast-bf16": "bf16"} if args.bf16 else {})
    print(f"{source}: {args.images} images, {settings}, {torch.get_num_threads()} threads", flush=True)

    pipe.generate(2, seeds=[0, 1], steps=2)  # first-call costs (allocator, kernels) out of the timings
    latents = {name: final_latents(pipe, args.images, mode) for name, mode in modes.items()}
    times = {name: [] for name in modes}
    cpu_times = {name: [] for name in modes}  # CPU seconds of this process: less sensitive to other jobs' load
    for r in range(args.repeats):
        for name, mode in modes.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            pipe.generate(args.images, seeds=range(args.images), fast=mode)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s wall {cpu_times[k][-1]:.2f} s CPU"
                                             for k, v in times.items()), flush=True)

    ref = latents["reference"].double()
    result = {"source": source, "settings": settings, "images": args.images, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "target_seconds": TARGET_SECONDS,
              "model_parameters": sum(p.numel() for p in pipe.model.parameters()), "modes": {}}
    for name in modes:
        median = statistics.median(times[name])
        err = max(relative_l2(latents[name], ref))
        result["modes"][name] = {"median_seconds": round(median, 3), "all_seconds": [round(t, 3) for t in times[name]],
                                 "median_cpu_seconds": round(statistics.median(cpu_times[name]), 3),
                                 "all_cpu_seconds": [round(t, 3) for t in cpu_times[name]],
                                 "speedup_vs_reference": round(statistics.median(times["reference"]) / median, 3),
                                 "max_rel_l2_vs_reference": err, "meets_target": median <= TARGET_SECONDS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "cpu_sampler.json", json.dumps(result, indent=2).encode())
    write_bytes_atomic(out / "cpu_sampler.md", markdown(result).encode())
    print(markdown(result), flush=True)
    return result


def markdown(r: dict) -> str:
    lines = [f"# {r['images']} images on the CPU ({r['source']})", "",
             f"Settings {r['settings']}; {r['model_parameters'] / 1e6:.2f}M parameters; torch {r['torch']}, "
             f"{r['threads']} threads on {r['cpu_count']} cores (shared with other jobs: medians of {r['repeats']} "
             f"alternating runs). Target: {r['target_seconds']} s.", "",
             "| mode | median wall s | median CPU s | x reference (wall) | max rel L2 vs reference | meets target |",
             "|---|---|---|---|---|---|"]
    for name, m in r["modes"].items():
        lines.append(f"| {name} | {m['median_seconds']:.2f} | {m['median_cpu_seconds']:.2f} | {m['speedup_vs_reference']:.2f} | "
                     f"{m['max_rel_l2_vs_reference']:.1e} | {'yes' if m['meets_target'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
