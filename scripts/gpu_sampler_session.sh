#!/usr/bin/env bash
# The next GPU session for issue 5, prepared on the CPU (about 5 minutes of an H100; run it with the device tool:
# `bash scripts/gpu_sampler_session.sh`, timeout_s 480). Every section of the sampler benchmark, the experimental
# FP8 precisions included (speed and final-latent error against the released sampler), then a profile of an
# fp8 step. Results land under $OUT: commit them to benchmarks/results/ and update benchmarks/README.md.
set -u
OUT=${OUT:-/tmp/gpu_out}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 330 python3 benchmarks/gpu_sampler.py --out "$OUT" --skip gelu_separate 2>&1 | grep -v -i warn
timeout 100 python3 benchmarks/gpu_profile.py --out "$OUT" --precision fp8 2>&1 | grep -v -i warn | tail -30
ls -la "$OUT"
