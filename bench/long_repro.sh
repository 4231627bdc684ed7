#!/usr/bin/env bash
# The long-benchmark reproduction (conf/experiment/long_repro.yaml): every strategy x seed, generation-scored,
# then its leaderboard. Usage:
#   bash bench/long_repro.sh [RESULTS_DIR] [STRATEGY ...]
#     RESULTS_DIR   default results/examples/long_repro
#     STRATEGY      default: seq_lora inc_lora olora_long replay migu ilora gere mtl
#   environment:  SEEDS="1 2 3"  EXPERIMENT=long_repro (or long_repro_cpu)  PARALLEL=1 (runs side by side; on one
#                 GPU all of them fit: PARALLEL=0 means no limit)  CLI="clbench-run"  EXTRA="key=value ..."
#                 CLAIMS=<file> (default: results/examples/long_repro_cpu/claims.yaml, the long benchmark's claims,
#                 judged in the leaderboard; a claims.yaml in RESULTS_DIR is used without it)
# A run that is interrupted resumes from its last finished task when the same command is given again.
set -uo pipefail
RESULTS=${1:-results/examples/long_repro}
shift || true
# an experiment definition: the strategies this experiment compares (not the registry's list)
STRATEGIES=${*:-seq_lora inc_lora olora_long replay migu ilora gere mtl}
SEEDS=${SEEDS:-1 2 3}
EXPERIMENT=${EXPERIMENT:-long_repro}
PARALLEL=${PARALLEL:-1}
CLI=${CLI:-clbench-run}
LEADERBOARD=${LEADERBOARD:-clbench-leaderboard}
mkdir -p "$RESULTS/logs"
# seeds outermost: a run cut short by the session's end still leaves every strategy at the first seeds
for seed in $SEEDS; do
  for s in $STRATEGIES; do
    if [ "$PARALLEL" != 0 ]; then
      while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
    fi
    # shellcheck disable=SC2086
    $CLI +experiment="$EXPERIMENT" strategy="$s" seed="$seed" results_dir="$RESULTS" leaderboard=false ${EXTRA:-} \
      > "$RESULTS/logs/${s}_s${seed}.txt" 2>&1 &
  done
done
wait
CLAIMS=${CLAIMS:-results/examples/long_repro_cpu/claims.yaml}
if [ -f "$RESULTS/claims.yaml" ]; then
  $LEADERBOARD "$RESULTS/runs"
else
  $LEADERBOARD "$RESULTS/runs" --claims "$CLAIMS"
fi
