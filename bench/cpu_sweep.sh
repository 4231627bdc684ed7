#!/usr/bin/env bash
# The CPU strategy comparison behind the example leaderboard results/examples/cpu_loglik/ (its README): SmolLM2-135M +
# LoRA on the demo stream (dbpedia -> amazon -> agnews, standard order 1 without the absent yahoo), 12 train /
# 6 test examples per class, 3 seeds, one run at a time on 2 cores. Replay keeps 10% of each finished task (2% of
# these tiny training sets would be 1-3 examples). Usage: bash bench/cpu_sweep.sh [results_dir]
set -euo pipefail
RESULTS=${1:-results/examples/cpu_loglik}
COMMON=(data.train_per_class=12 data.test_per_class=6 eval.general_passages=8 seed=1,2,3 results_dir=$RESULTS leaderboard=false)
BIN=${BIN:-.venv/bin}
# an experiment definition: the strategies this experiment compares (not the registry's list)
for s in seq_lora olora migu ilora; do
  $BIN/clbench-run -m strategy=$s "${COMMON[@]}"
done
$BIN/clbench-run -m strategy=replay strategy.buffer.fraction=0.1 "${COMMON[@]}"
$BIN/clbench-leaderboard "$RESULTS/runs"
