#!/usr/bin/env bash
# Both GPU benchmarks, one after the other, in one short session on a CUDA machine
# (python3 with a CUDA build of torch and peft; Ray, MLflow and Optuna are not needed):
#   bash benchmarks/run_gpu_benchmarks.sh            # outputs in $OUT (default /tmp/gpu-bench)
# About 9 minutes on one H200; each part has its own time limit and prints as it goes.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
timeout 270 python3 benchmarks/bench_vs_upstream.py --budget-s 150 2>&1 | tee "$OUT/bench_vs_upstream.txt"
timeout 290 python3 benchmarks/bench_gpu_sweep.py --budget-s 240 --out /tmp/bench_gpu_sweep 2>&1 \
  | tee "$OUT/bench_gpu_sweep.txt"
cp /tmp/bench_gpu_sweep/bench_gpu_sweep.md "$OUT/" 2>/dev/null || true
