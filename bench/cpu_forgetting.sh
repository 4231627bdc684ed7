#!/usr/bin/env bash
# The forgetting comparison on 2 CPU cores: SmolLM2-135M + LoRA on the demo stream (dbpedia -> amazon ->
# agnews = standard order 1 without the absent yahoo), the default 16 train / 8 test examples per class, 3 seeds,
# evaluated as the papers do (greedy generation, exact match: a model that has drifted to the latest task's label
# set is wrong, while label log-likelihood only ranks each task's own labels and hides that drift).
# Replay is MIGU's LoRAReplay (mode mix) keeping 10% of each finished task (2% of these small training sets would
# be 4 dbpedia examples and no amazon one). GeRe replays 64 general passages of 128 tokens, 2 per batch of 8.
# Usage: bash bench/cpu_forgetting.sh [results_dir] [strategies...]
#   e.g. bash bench/cpu_forgetting.sh results/examples/cpu_generate replay ilora gere     (about 15-45 min per strategy)
set -euo pipefail
RESULTS=${1:-results/examples/cpu_generate}
shift || true
# an experiment definition: the strategies this experiment compares (not the registry's list)
STRATEGIES=("${@:-seq_lora olora migu replay ilora gere}")
BIN=${BIN:-.venv/bin}
for s in ${STRATEGIES[@]}; do
  extra=()
  [ "$s" = replay ] && extra=(strategy.buffer.fraction=0.1)
  $BIN/clbench-run -m strategy=$s "${extra[@]}" eval=generate seed=1,2,3 results_dir=$RESULTS leaderboard=false
done
$BIN/clbench-leaderboard "$RESULTS/runs"
