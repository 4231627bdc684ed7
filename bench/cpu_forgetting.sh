#!/usr/bin/env bash
# Issue #5's forgetting comparison on 2 CPU cores: SmolLM2-135M + LoRA on the demo stream (dbpedia -> amazon ->
# agnews = standard order 1 without the absent yahoo), the default 16 train / 8 test examples per class, 3 seeds,
# evaluated as the papers do (greedy generation, exact match: a model that has drifted to the latest task's label
# set is wrong, while label log-likelihood only ranks each task's own labels and hides that drift).
# Replay keeps 10% of each finished task (2% of these small training sets would be 4 dbpedia examples).
# Usage: bash bench/cpu_forgetting.sh [results_dir]      (~95 minutes on 2 cores, one run at a time)
set -euo pipefail
RESULTS=${1:-results/cpu_generate}
COMMON=(eval=generate seed=1,2,3 results_dir=$RESULTS leaderboard=false)
BIN=${BIN:-.venv/bin}
for s in seq_lora olora migu; do
  $BIN/clbench-run -m strategy=$s "${COMMON[@]}"
done
$BIN/clbench-run -m strategy=replay strategy.buffer.fraction=0.1 "${COMMON[@]}"
$BIN/clbench-run -m strategy=ilora "${COMMON[@]}"
$BIN/clbench-leaderboard "$RESULTS/runs"
