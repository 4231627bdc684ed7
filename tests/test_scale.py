"""Scaling features on the tiny model: activation checkpointing and bf16 weights under every strategy, engines
that cannot run (FSDP on CPU, DeepSpeed) refused at start, and the multi-node launch presets."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.runner import recipe as runner
from benchmark.modeling.model import replaying_checkpointed_forward
from strategies import registered
from strategies.base import build
from tests.conftest import CONF, ROOT, TINY_RUN, compose_cfg, strategy_yamls

# two tasks so that every strategy's second-task machinery runs (replay, masks, orthogonality, consistency)
SHORT = ["stream.tasks=[dbpedia,amazon]", "data.train_per_class=2", "data.test_per_class=1", "trainer.batch_size=2",
         "trainer.grad_accum=2", "trainer.max_steps_per_task=2", "eval.general_passages=0", "eval.max_new_tokens=4", "resume=false"]


def _yaml_per_strategy() -> list[str]:
    """One conf/strategy YAML per registered strategy, plus full-FT MIGU (its hooks sit on plain Linear layers)."""
    yamls = strategy_yamls()
    assert set(yamls) == set(registered())
    return sorted({names[0] for names in yamls.values()} | {"migu_ft"})


# bf16 weights for one LoRA strategy, one full fine-tuning and one reading hidden states: what bf16 changes
# (adapter precision, full-weight updates, hidden-state losses) is covered without repeating every strategy
BF16_REPRESENTATIVES = ("seq_lora", "migu_ft", "ilora")


def _spied_run(yaml_name: str, results: Path, *extra: str) -> dict:
    """Every micro-batch's loss, the accuracy matrix, and how many forward calls were checkpoint replays."""
    cfg = compose_cfg(TINY_RUN + SHORT + [f"strategy={yaml_name}", f"results_dir={results}", *extra])
    s = build(dict(cfg.strategy))
    seen = {"losses": [], "replays": 0, "hooked": False, "ctx": None}
    loss, before_stage = s.loss, s.before_stage

    def spy_loss(ctx, batch, out, ce):
        value = loss(ctx, batch, out, ce)
        seen["losses"].append(float(value.detach()))
        return value

    def count_replays(module, inputs, output):
        seen["replays"] += replaying_checkpointed_forward()

    def spy_before_task(ctx):
        seen["ctx"] = ctx
        if not seen["hooked"]:
            for name, m in ctx.model.named_modules():
                if name.endswith("self_attn"):  # the MLP ends the layer: torch may stop the replay inside it
                    m.register_forward_hook(count_replays)
            seen["hooked"] = True
        before_stage(ctx)

    s.loss, s.before_stage = spy_loss, spy_before_task
    from benchmark.records.store import load_record

    rec = load_record(runner.run(cfg, s))
    weights = {n: p.detach().float().clone() for n, p in seen.pop("ctx").model.named_parameters()}
    return {**seen, "weights": weights, "matrix": rec["matrix"]["values"], "steps": [st["steps"] for st in rec["stages"]]}


@pytest.mark.parametrize("yaml_name,dtype", [(y, "float32") for y in _yaml_per_strategy()]
                         + [(y, "bfloat16") for y in BF16_REPRESENTATIVES])
def test_gradient_checkpointing_trains_every_strategy_exactly_like_without(yaml_name, dtype, tmp_path):
    plain = _spied_run(yaml_name, tmp_path / "plain", f"model.dtype={dtype}")
    ckpt = _spied_run(yaml_name, tmp_path / "ckpt", f"model.dtype={dtype}", "trainer.gradient_checkpointing=true")
    assert plain["replays"] == 0 and ckpt["replays"] > 0, "checkpointing did not replay any layer in backward"
    assert all(math.isfinite(v) for v in ckpt["losses"]) and len(ckpt["losses"]) == len(plain["losses"])
    assert ckpt["losses"] == pytest.approx(plain["losses"], abs=1e-5)
    assert ckpt["steps"] == plain["steps"]
    assert ckpt["matrix"] == plain["matrix"]
    assert ckpt["weights"].keys() == plain["weights"].keys()
    for name, w in plain["weights"].items():
        torch.testing.assert_close(ckpt["weights"][name], w, rtol=0, atol=1e-5, msg=name)


def test_migu_counts_each_token_once_when_backward_replays_the_forward(tmp_path):
    """MIGU's magnitude statistics of a window: the same token counts and sums with and without checkpointing (a
    replay in backward would double them, or add only the layers replayed before torch stops early)."""
    def stats(results: Path, *extra: str) -> list[list[float]]:
        cfg = compose_cfg(TINY_RUN + SHORT + ["strategy=migu", f"results_dir={results}", *extra])
        s = build(dict(cfg.strategy))
        rows, step = [], s.before_optimizer_step

        def spy(ctx):
            rows.append([float(t.count) for t in s.tracked] + [float(t.sum.sum()) for t in s.tracked if t.sum is not None])
            step(ctx)

        s.before_optimizer_step = spy
        runner.run(cfg, s)
        return rows

    plain = stats(tmp_path / "plain")
    ckpt = stats(tmp_path / "ckpt", "trainer.gradient_checkpointing=true")
    assert any(r and r[0] > 0 for r in plain), "MIGU collected nothing: the test would prove nothing"
    assert len(ckpt) == len(plain)
    for got, want in zip(ckpt, plain):
        assert got == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------------------------- engines
def _acc(kind: str, device: str = "cpu"):
    from types import SimpleNamespace

    return SimpleNamespace(distributed_type=SimpleNamespace(value=kind), mixed_precision="no", device=torch.device(device))


def test_a_sharding_engine_that_accelerate_cannot_honour_is_refused(monkeypatch):
    """accelerate launch with an FSDP config on the CPU starts its processes as MULTI_CPU (DDP) without a word; the run
    refuses instead of recording DDP numbers as FSDP ones. DeepSpeed is refused however accelerate resolved it."""
    from benchmark.runner.engines import check_engine
    from strategies.base import StrategyConfigError

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for name in ("seq_lora", "replay"):
        with pytest.raises(StrategyConfigError, match="distributed_type FSDP cannot run on cpu.*torchrun"):
            check_engine(build({"name": name}), _acc("MULTI_CPU"))
        check_engine(build({"name": name}), _acc("FSDP", "cuda"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(StrategyConfigError, match="DeepSpeed"):
        check_engine(build({"name": "seq_lora"}), _acc("MULTI_GPU", "cuda"))


@pytest.mark.slow
def test_accelerate_fsdp_on_two_cpu_processes_stops_at_start_with_the_reason(tmp_path):
    import os
    import subprocess
    import sys

    cfg = yaml.safe_load((CONF / "accelerate" / "fsdp.yaml").read_text())
    cfg.update(num_processes=2, use_cpu=True, mixed_precision="no", main_process_port=29547)
    (tmp_path / "fsdp_cpu.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp_cpu.yaml"),
                        "-m", "benchmark.cli", *TINY_RUN, *SHORT, "trainer.device=cpu", f"results_dir={tmp_path / 'r'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode != 0
    assert p.stderr.count("distributed_type FSDP cannot run on cpu") == 2  # both processes, before loading
    assert not list(tmp_path.glob("r/runs/*.json"))


# ----------------------------------------------------------------------------------------------- multi-node presets
def _launcher(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmark.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher)


def test_multinode_presets_compose_and_agree_on_the_process_count():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    # composing checks every key and type against the submitit plugin's own schema (SlurmQueueConf)
    launcher = _launcher("slurm_multinode")
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["nodes"] == 2 and launcher["tasks_per_node"] == launcher["gpus_per_node"] == 8
    assert _launcher("slurm")["nodes"] == 1  # the sweep preset stays one GPU per job
    configs = {p.stem: ClusterConfig.from_yaml_file(str(p)) for p in sorted((CONF / "accelerate").glob("*.yaml"))}
    assert {"ddp", "fsdp", "multinode"} <= set(configs)
    multi = configs["multinode"]
    assert multi.distributed_type == DistributedType.MULTI_GPU and not multi.use_cpu
    assert multi.num_machines == launcher["nodes"]
    assert multi.num_processes == launcher["nodes"] * launcher["gpus_per_node"]
    assert configs["fsdp"].distributed_type == DistributedType.FSDP and configs["fsdp"].fsdp_config["fsdp_version"] == 2
    for c in configs.values():
        assert c.num_processes % c.num_machines == 0 and c.mixed_precision == "bf16"


def test_submitit_tasks_become_torch_distributed_processes(monkeypatch):
    """Task 9 of a 2-node x 8-task submitit job: rank 9 of 16, local rank 1, the job's first node as master."""
    import os

    from benchmark.runner.engines import export_submitit_distributed

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(k, "")  # recorded, so that the values exported below are removed after the test
        monkeypatch.delenv(k)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert export_submitit_distributed()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "CUDA_VISIBLE_DEVICES")}
    assert got == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "CUDA_VISIBLE_DEVICES": "1"}
    assert not export_submitit_distributed()  # already set (as under torchrun / accelerate launch): left alone


# ----------------------------------------------------------------------------------------------- memory bench
def _memory_bench():
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import memory
    finally:
        sys.path.pop(0)
    return memory


def test_memory_bench_parameter_counts_match_the_real_architectures():
    from transformers import LlamaConfig, LlamaForCausalLM

    memory = _memory_bench()
    for name, t in memory.TARGETS.items():
        cfg = LlamaConfig(hidden_size=t["hidden"], num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                          num_key_value_heads=t["kv_heads"], intermediate_size=t["intermediate"], vocab_size=t["vocab"],
                          tie_word_embeddings=t["tied"])
        with torch.device("meta"):  # shapes only, no memory
            model = LlamaForCausalLM(cfg)
        assert memory.llama_params(t) == sum(p.numel() for p in model.parameters()), name
    assert round(memory.llama_params(memory.TARGETS["LLaMA-2-7B"]) / 1e9, 2) == 6.74
    assert round(memory.llama_params(memory.TARGETS["LLaMA-3.1-8B"]) / 1e9, 2) == 8.03


def test_memory_bench_measures_a_fresh_process_per_setting_and_extrapolates(tmp_path):
    import json

    memory = _memory_bench()
    out = tmp_path / "memory.json"
    memory.main(["--models", "tiny", "--strategies", "seq_lora", "--out", str(out), "--gpu-json", str(tmp_path / "no.json")])
    doc = json.loads(out.read_text())
    rows = doc["measurements"]
    assert sorted(r["ckpt"] for r in rows) == [False, True]
    assert all("error" not in r and r["peak_mb"] > r["loaded_mb"] > 100 for r in rows), rows
    assert all(r["tokens_per_micro_batch"] == 4 * memory.SEQ and r["layers"] == 2 for r in rows)
    x = doc["extrapolation"]["LLaMA-3.1-8B"]
    assert x["weights_gb"]["bf16"] == pytest.approx(16.1, abs=0.1) and x["full_ft_states_gb"] == pytest.approx(128.5, abs=0.1)
    assert set(x["strategies"]) == set(memory.STRATEGIES)
    assert "LLaMA-2-7B" in memory.table(doc)


def test_the_memory_bench_covers_every_registered_strategy():
    memory = _memory_bench()
    yamls = {y: name for name, ys in strategy_yamls().items() for y in ys}
    assert set(memory.STRATEGIES) <= set(yamls)
    from strategies.base import _REGISTRY

    built_in = {n for n in registered() if _REGISTRY[n].factory.__module__.startswith("strategies.")}
    assert {yamls[s] for s in memory.STRATEGIES} == built_in - {"compose"}
