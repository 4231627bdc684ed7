#!/usr/bin/env bash
# The GPU strategy comparison: SmolLM2-135M + LoRA on the demo stream (dbpedia -> amazon -> agnews), 64 train /
# 16 test examples per class, bf16 autocast, 3 seeds run side by side on one GPU. Usage:
#   bash bench/gpu_sweep.sh RESULTS_DIR STRATEGY [STRATEGY ...]    (the committed set: results/examples/gpu_h100)
# then: clbench-leaderboard RESULTS_DIR/runs
set -uo pipefail
RESULTS=$1; shift
CLI=${CLI:-python3 -m benchmark.cli}
export OMP_NUM_THREADS=2
for s in "$@"; do
  for seed in 1 2 3; do
    $CLI trainer=gpu trainer.batch_size=16 trainer.grad_accum=1 strategy=$s seed=$seed data.train_per_class=64 \
      data.test_per_class=16 results_dir="$RESULTS" leaderboard=false > "$RESULTS/log_${s}_$seed.txt" 2>&1 &
  done
done
wait
