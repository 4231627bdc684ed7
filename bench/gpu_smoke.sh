#!/usr/bin/env bash
# First call on a lent GPU machine (it also carries half of SmolLM2's GGUF): library versions, and every
# strategy run on the tiny model under trainer=gpu (cuda, bf16 autocast) on a cut of two tasks, side by side.
set -uo pipefail
export PYTHONPATH=$PWD/.gpu_pkgs:$PWD CLBENCH_DATA=$PWD/.gpu_pkgs/_mini_data TOKENIZERS_PARALLELISM=false
export CLBENCH_GENERAL_DIR=$PWD/.gpu_pkgs/_general/moby-dick
python3 -c "import torch,transformers,peft,accelerate;print('torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__,'accelerate',accelerate.__version__)"
nvidia-smi -L
# an experiment definition: the strategies this experiment compares (not the registry's list)
for s in seq_lora inc_lora olora_long replay migu ilora gere mtl migu_replay; do
  python3 -m benchmark.cli model=tiny trainer=gpu "stream.tasks=[agnews,amazon]" data.train_per_class=8 \
    data.test_per_class=2 eval.general_passages=2 eval.max_new_tokens=8 strategy=$s results_dir=/tmp/smoke \
    leaderboard=false > /tmp/smoke_$s.txt 2>&1 &
done
wait
for s in seq_lora inc_lora olora_long replay migu ilora gere mtl migu_replay; do echo "== $s"; grep -v "it/s\|Warning\|warn" /tmp/smoke_$s.txt | tail -4; done
ls .gpu_part_a
