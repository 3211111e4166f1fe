#!/usr/bin/env bash
# The GPU session for issue 20 deliverable 6 (GMem v2's fast path), prepared on the CPU. Run it with the device tool as
# `bash scripts/gpu_sampler_v2_session.sh` (timeout_s 420; about 4 minutes of an H100, compiles included: batch
# 256, its guided double 512, the live batch 4).
# One run of benchmarks/gpu_sampler_v2.py on a random-weight LightningDiT-XL/1 at 256 px (latents 32x16x16), the
# 99-evaluation stochastic Heun recipe: upstream's sampler as released (eager fp32+TF32, two network calls per
# evaluation, guidance on a doubled batch at every call) against the fast path (bf16, compiled blocks, CUDA graphs
# for the live batch). Targets: >= 20 images/s unguided at batch 256, >= 18 with guidance 7.75 on t <= 0.11, 4 images
# warm <= 0.6 s, bf16 within 2% relative L2 of fp32 on seeds 0..3. Sections after --budget-s are skipped and named.
# Results land under $OUT: copy them to benchmarks/results/ (gpu_sampler_v2_<card>.{json,md}) and put the numbers in
# benchmarks/README.md.
set -u
OUT=${OUT:-/tmp/gpu_out}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 360 python3 benchmarks/gpu_sampler_v2.py --out "$OUT" --budget-s 300 2>&1 | grep -v -i -E "warn|^\s*$"
ls -la "$OUT"
