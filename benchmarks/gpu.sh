#!/usr/bin/env bash
# The issue-6 GPU run, prepared for the device tool (one H100, 16 cores). Carry `.whl`
# (open_clip_torch, faiss-cpu, ftfy, wcwidth, duckdb, webdataset, braceexpand wheels for
# Python 3.12) and run:
#   bash benchmarks/gpu.sh
# It writes $OUT/bench-gpu.json, $OUT/gpu-extras.json and $OUT/log.txt.
# The 2026-11-27 runs (BENCHMARKS.md) took, on one H100, device call included:
#   --variants then --start 3, 10,000 per size: ~6 min;  --per-size 40000 --only 3: ~4 min.
# Open question for a next GPU session: does --compile pay on long RN50 runs (GPU path)?
#   SKIP_EXTRAS=1 PER_SIZE=40000 bash benchmarks/gpu.sh --start 4 --only 1   # compiled, ~3 min
#   SKIP_EXTRAS=1 PER_SIZE=40000 bash benchmarks/gpu.sh --only 1   # same machine: uncompiled
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nproc
timeout "${BENCH_S:-420}" python3 benchmarks/gpu_bench.py --per-size "${PER_SIZE:-10000}" \
    --out "$OUT" "$@" 2>&1 | grep -v "No pretrained weights" | tee "$OUT/log.txt"
[ -n "${SKIP_EXTRAS:-}" ] || timeout "${EXTRAS_S:-200}" python3 benchmarks/gpu_extras.py --images /tmp/gpu-bench/images \
    --out "$OUT" 2>&1 | grep -v "No pretrained weights\|Train Epoch\|INFO" | tee -a "$OUT/log.txt"
