"""Structured configs: Hydra validates every key and type against these dataclasses at start.

A typo such as `trainer.lr_rate=1` or `trainer.epochs=abc` fails before any work with the key named.
Strategy settings are validated by the strategy registry against the strategy's own config dataclass.

Defaults live in the dataclasses only: conf/*/*.yaml state what differs from them. The `stream=<name>` choices
are the streams of task_streams/streams.yaml, and each strategy's defaults are its config dataclass's, both
stored in Hydra's ConfigStore by register_configs (conf/strategy/*.yaml pull theirs in with
`defaults: [/strategy_defaults/<name>@_here_]`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from benchmark.errors import ClbenchError
from benchmark.evaluation import EvalConfig
from benchmark.model import ModelConfig
from task_streams import DataConfig, available_streams, available_tasks


MISSING_POLICIES = ("error", "skip")


@dataclass
class StreamConfig:
    name: str = "demo"
    tasks: Optional[list[str]] = None  # a custom order instead of a published one
    missing: Optional[str] = None  # override the stream's policy for tasks without data: error | skip

    def __post_init__(self):
        # names only (task_streams' YAML files), so that a typo fails before the data and the model load
        problems = []
        if self.tasks is None and self.name not in available_streams():
            problems.append(f"stream.name must be one of {'|'.join(available_streams())} (or set stream.tasks), "
                            f"got {self.name!r}")
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in available_tasks()]
            if not self.tasks or unknown:
                problems.append(f"stream.tasks must be a non-empty list of tasks of task_streams/tasks.yaml, got "
                                f"{unknown[0] if unknown else self.tasks!r}; known: {', '.join(available_tasks())}")
        if self.missing is not None and self.missing not in MISSING_POLICIES:
            problems.append(f"stream.missing must be one of {'|'.join(MISSING_POLICIES)} or null, got {self.missing!r}")
        if problems:
            raise ClbenchError("; ".join(problems))


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
    gradient_checkpointing: bool = False  # recompute each decoder layer in backward: less memory, ~1.3x the time


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
    data: DataConfig = field(default_factory=DataConfig)
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


def strategy_defaults() -> dict[str, dict[str, Any]]:
    """{strategy name: {'name': ..., every field of its config dataclass at its default}} for every registered
    strategy whose config has defaults for all fields (compose has none: its parts are its whole content)."""
    import strategies  # noqa: F401  (registers the built-in strategies)
    from strategies.base import _REGISTRY, StrategyConfigError

    out = {}
    for name, (config_cls, _) in sorted(_REGISTRY.items()):
        try:
            default = config_cls()
        except (StrategyConfigError, TypeError):
            continue
        out[name] = {"name": name, **dataclasses.asdict(default)}
    return out


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    # streams.yaml is the one list of streams: a new stream there is a new `stream=` choice, with no YAML here
    for name in available_streams():
        cs.store(group="stream", name=name, node=StreamConfig(name=name))
    # the composed strategy holds every key at the dataclass default, so that `strategy.<key>=v` overrides it,
    # a nested override (`strategy.buffer.size=100`) keeps the block's other defaults, records list every
    # setting, and a changed default reaches command-line runs
    for name, node in strategy_defaults().items():
        cs.store(group="strategy_defaults", name=name, node=node)


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
