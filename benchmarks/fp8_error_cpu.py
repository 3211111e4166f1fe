"""Do FP8 products keep the images? An estimate on the CPU, before a GPU measures it at full size.

    python benchmarks/fp8_error_cpu.py --steps 25      # about 12 minutes on 2 CPU cores

SiT-XL/2's full depth and width (28 blocks of 1152) at 128 px (4x16x16 latents, 64 tokens, so it fits a CPU),
random weights as in gpu_sampler.py (normal, std 0.02), 2 images, the released SDE for --steps steps. Each
fast-path precision (bf16, fp8-mlp, fp8) against the reference path in fp32 on the same noise: the per-image
relative L2 error of the final latents, the quantity issue 5 bounds by 2%. Fewer steps and tokens than the GPU
benchmark, so the figures are a guide; benchmarks/gpu_sampler.py gives the real ones at 256 px and 250 steps.
Results: <out>/fp8_error_cpu.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gmem_explore.models.sit import build_model, model_config  # noqa: E402
from gmem_explore.safefiles import write_bytes_atomic  # noqa: E402
from gmem_explore.sampling import initial_noise, make_generators, sample  # noqa: E402
from gpu_sampler import randomize, relative_l2  # noqa: E402  (benchmarks/ is this script's folder)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--precisions", default="bf16,fp8-mlp,fp8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = model_config("SiT-XL/2", input_size=args.image_size // 8)
    model = randomize(build_model(**cfg.to_dict()).eval().requires_grad_(False))  # as the GPU benchmark's

    def run(mode):
        gens = make_generators(range(args.images), "cpu")
        noise = initial_noise(gens, (cfg.in_channels, cfg.input_size, cfg.input_size))
        snippets = torch.nn.functional.normalize(
            torch.randn(args.images, cfg.snippet_dim, generator=torch.Generator().manual_seed(1234)), dim=1)
        start = time.perf_counter()
        out = sample(model, noise, snippets, "sde", args.steps, gens, fast=mode)
        return out, time.perf_counter() - start

    reference, seconds = run(False)
    result = {"model": "SiT-XL/2 (random weights, std 0.02)", "image_size": args.image_size, "steps": args.steps,
              "images": args.images, "torch": torch.__version__, "reference_seconds": round(seconds, 1), "errors": {}}
    print(f"reference (fp32): {seconds:.0f} s", flush=True)
    for precision in filter(None, args.precisions.split(",")):
        out, seconds = run(precision)
        rel = relative_l2(out, reference)
        result["errors"][precision] = {"max": max(rel), "per_image": rel, "seconds": round(seconds, 1)}
        print(f"{precision}: max rel L2 {max(rel):.4f} ({seconds:.0f} s)", flush=True)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out_dir / "fp8_error_cpu.json", json.dumps(result, indent=1).encode())
        lines = [f"# Final-latent error of the fast-path precisions ({result['model']}, {args.image_size} px, "
                 f"{args.steps}-step SDE, {args.images} images, CPU, torch {torch.__version__})", "",
                 "| precision | max rel L2 vs fp32 reference | per image |", "|---|---|---|"]
        lines += [f"| {k} | {v['max']:.4f} | {', '.join(f'{e:.4f}' for e in v['per_image'])} |"
                  for k, v in result["errors"].items()]
        lines += ["", "Issue 5's bound: 2%. The GPU benchmark (256 px, 250 steps) gives the real figure."]
        write_bytes_atomic(out_dir / "fp8_error_cpu.md", ("\n".join(lines) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
