"""Structured configs: Hydra validates every key and type against these dataclasses at start.

A typo such as `trainer.lr_rate=1` or `trainer.epochs=abc` fails before any work with the key named.
Strategy settings are validated by the strategy registry against the strategy's own config dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from benchmark.evaluation import EvalConfig
from benchmark.model import ModelConfig


@dataclass
class StreamConfig:
    name: str = "demo"
    tasks: Optional[list[str]] = None  # a custom order instead of a published one
    missing: Optional[str] = None  # override the stream's policy for tasks without data: error | skip


@dataclass
class DataSettings:
    data_dir: Optional[str] = None
    hub_repo: Optional[str] = None
    train_per_class: Optional[int] = 16
    test_per_class: Optional[int] = 8
    seed: int = 0
    task_prefix: bool = True


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    epochs_per_task: dict[str, int] = field(default_factory=dict)  # e.g. {MNLI: 2} (O-LoRA's long.sh)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    max_prompt_tokens: int = 128
    num_threads: int = 0  # torch CPU threads, 0 = torch default
    log_every: int = 10
    max_steps_per_task: int = 0  # 0 = no cap (debugging aid; recorded)


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "clbench"
    mode: str = "offline"  # wandb mode: offline by default, online only when asked
    dir: Optional[str] = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    data: DataSettings = field(default_factory=DataSettings)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "seq_lora"})
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    results_dir: str = "results"
    resume: bool = True  # continue an interrupted identical run from its last finished task
    keep_checkpoints: bool = False
    leaderboard: bool = True  # regenerate the leaderboard after the run
    tag: str = ""


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def compose(overrides: list[str] | None = None, conf_dir: str | None = None) -> RunConfig:
    """A RunConfig from the conf/ tree and command-line style overrides, exactly as clbench-run builds it
    (for tests, bench scripts and notebooks, which do not go through the Hydra app)."""
    from pathlib import Path

    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    conf_dir = conf_dir or str(Path(__file__).resolve().parent.parent / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    return OmegaConf.to_object(cfg)
