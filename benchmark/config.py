"""Every configuration dataclass of a run, and nothing that needs torch.

Hydra validates every key and type against these dataclasses at start (a typo such as `trainer.lr_rate=1` or
`trainer.epochs=abc` fails before any work with the key named), and each dataclass checks its own values in
`__post_init__` (the PEFT pattern), so that a bad value fails in a second with its key named. The machine's
abilities (is there a GPU, can results_dir be written) are checked by benchmark/runner/preflight.py.
Strategy settings are validated by the strategy registry against the strategy's own config dataclass.

Defaults live in the dataclasses only: conf/*/*.yaml state what differs from them. The `stream=<name>` choices
are the streams of task_streams/streams.yaml, and each strategy's defaults are its config dataclass's, both
stored in Hydra's ConfigStore by register_configs (conf/strategy/*.yaml pull theirs in with
`defaults: [/strategy_defaults/<name>@_here_]`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from benchmark.errors import ClbenchError
from benchmark.records.schema import EVAL_MODES, SCORE_MODES  # noqa: F401  (SCORE_MODES: re-exported for readers)
from task_streams import DataConfig, available_streams, available_tasks
from task_streams.registry import MISSING_POLICIES

# ---------------------------------------------------------------- allowed values, each listed once
DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISION = ("no", "bf16", "fp16")  # accelerate's names
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("none", "wandb")  # benchmark/runner/loggers.py has one class per name
PAPERS_MAX_NEW_TOKENS = 50  # O-LoRA's and MIGU's generation limit
# which cells each evaluation scores (benchmark/runner/schedule.py): every task after every stage, the cells the
# papers' metrics read, full rows every k stages plus those cells, or full up to AUTO_FULL_STAGES stages and the
# papers' cells beyond
EVAL_SCHEDULES = ("auto", "full", "papers", "every_k")
EVAL_SPLITS = ("test", "val")
AUTO_FULL_STAGES = 5
MIN_PROMPT_TOKENS = 8  # the prompt's fixed head and tail alone take about this many tokens
# a bound well past any model's context here, so that an absurd value fails at start, not once the model has loaded
MAX_NEW_TOKENS = 65536

SMOLLM2 = "smollm2-135m"


def at_least(key: str, value, minimum) -> str | None:
    return None if value >= minimum else f"{key} must be >= {minimum}, got {value}"


def one_of(key: str, value, allowed: tuple[str, ...]) -> str | None:
    return None if value in allowed else f"{key} must be one of {'|'.join(allowed)}, got {value!r}"


def raise_problems(problems: list[str | None]) -> None:
    """One ClbenchError listing every problem found, each naming its key (or nothing when there is none)."""
    found = [p for p in problems if p]
    if found:
        raise ClbenchError("; ".join(found))


@dataclass
class ModelConfig:
    name: str = SMOLLM2  # "smollm2-135m", "tiny-llama", "tiny-t5", a hub name or a local folder
    dtype: str = "float32"  # one of DTYPES
    trust_remote_code: bool = False
    cache_dir: Optional[str] = None  # where the SmolLM2 safetensors conversion is kept
    revision: Optional[str] = None
    tiny: dict = field(default_factory=dict)  # overrides of the tiny config (tests)

    def __post_init__(self):
        raise_problems([one_of("model.dtype", self.dtype, DTYPES)])


@dataclass
class StreamConfig:
    name: str = "demo"
    tasks: Optional[list[str]] = None  # a custom order instead of a published one
    missing: Optional[str] = None  # override the stream's policy for tasks without data: one of MISSING_POLICIES

    def __post_init__(self):
        twice = sorted({t for t in self.tasks or [] if self.tasks.count(t) > 1})
        raise_problems([
            # BWT and FWT would treat the two as different tasks
            f"stream.tasks names {', '.join(twice)} twice; a stream's tasks are distinct" if twice else None,
            None if self.missing is None or self.missing in MISSING_POLICIES else
            f"stream.missing must be one of {'|'.join(MISSING_POLICIES)} or null, got {self.missing!r}",
        ])

    def name_problems(self, extra_tasks: str | None) -> list[str]:
        """Names only (task_streams' YAML files and the user's data.extra_tasks), so that a typo fails before the
        data and the model load."""
        streams, tasks = available_streams(extra_tasks), available_tasks(extra_tasks)
        if self.tasks is None and self.name not in streams:
            return [f"stream.name must be one of {'|'.join(streams)} (or set stream.tasks), got {self.name!r}"]
        unknown = [t for t in self.tasks or [] if t not in tasks]
        if self.tasks is not None and (not self.tasks or unknown):
            return [f"stream.tasks must be a non-empty list of tasks of task_streams/tasks.yaml or data.extra_tasks, "
                    f"got {unknown[0] if unknown else self.tasks!r}; known: {', '.join(tasks)}"]
        return []


@dataclass
class EvalConfig:
    mode: str = "both"  # one of EVAL_MODES
    batch_size: int = 16
    normalize: bool = False  # loglik: rank by mean instead of summed answer log-probability
    max_new_tokens: int = PAPERS_MAX_NEW_TOKENS  # generate: a row stops earlier at EOS
    general_passages: int = 16  # general-ability perplexity passages (0 = off)
    general_tokens: int = 128
    # 0: batches of batch_size prompts; else as many length-sorted prompts as fit this many padded tokens (prompt
    # and new tokens): more rows per batch on short prompts, sized for the device. Other batches may round
    # differently, so it is part of the configuration's identity
    batch_tokens: int = 0
    schedule: str = "auto"  # one of EVAL_SCHEDULES
    # which split every evaluation scores: test, or val (data.val_per_class held out of training; for tuning)
    split: str = "test"
    every_k: int = 2  # schedule every_k: a full row after every k-th stage

    def __post_init__(self):
        raise_problems([
            one_of("eval.mode", self.mode, EVAL_MODES),
            one_of("eval.schedule", self.schedule, EVAL_SCHEDULES),
            one_of("eval.split", self.split, EVAL_SPLITS),
            at_least("eval.every_k", self.every_k, 1),
            at_least("eval.batch_size", self.batch_size, 1),
            at_least("eval.batch_tokens", self.batch_tokens, 0),
            at_least("eval.max_new_tokens", self.max_new_tokens, 1),
            None if self.max_new_tokens <= MAX_NEW_TOKENS else
            f"eval.max_new_tokens must be <= {MAX_NEW_TOKENS} (the papers use {PAPERS_MAX_NEW_TOKENS}), got {self.max_new_tokens}",
            at_least("eval.general_passages", self.general_passages, 0),
            at_least("eval.general_tokens", self.general_tokens, 2),
        ])

    @property
    def generates(self) -> bool:
        return self.mode in ("both", "generate")

    @property
    def ranks_labels(self) -> bool:
        return self.mode in ("both", "loglik")

    @property
    def primary(self) -> str:
        """The scores a record's `matrix` and `metrics` hold: generation when computed (the papers' mode)."""
        return "generate" if self.generates else "loglik"


# the general-ability tasks clbench defines over local files (benchmark/runner/general.py LOCAL_TASKS); any other
# name in general.tasks is an lm-evaluation-harness task, which needs hub access to its dataset
GENERAL_ROWS = ("all", "ends")


@dataclass
class GeneralConfig:
    """General ability the way the papers report it: lm-evaluation-harness tasks on the model as it is evaluated
    for the accuracy matrix (benchmark/runner/general.py). The corpus perplexity stays in eval.general_*."""

    # lm-eval tasks: mmlu_cloze (MMLU scoring each answer's text, lm-eval's mmlu_continuation; what SmolLM2's model
    # card reports), mmlu (the letter format A-D, lm-eval's default mmlu), both over the local MMLU file
    # (task_streams/mmlu.py); or any lm-eval task name (its data from the hub). [] = none
    tasks: list[str] = field(default_factory=list)
    per_subject: int = 5  # local MMLU: questions per subject, stratified and seeded (0 = all 14,042)
    limit: Optional[int] = None  # with a hub task: every task's first `limit` documents (null = all)
    num_fewshot: int = 0  # the local MMLU file holds the test split only: zero-shot
    batch_size: int = 8  # lm-eval's batch (issue 27 saw its "auto" pick 64 on CPU and run 10x slower than 8)
    seed: int = 1234  # which questions per_subject draws (lm-eval's default seed)
    rows: str = "all"  # all: after every evaluation of the schedule; ends: zero-shot and after the last stage

    def __post_init__(self):
        raise_problems([
            at_least("general.per_subject", self.per_subject, 0),
            None if self.limit is None else at_least("general.limit", self.limit, 1),
            at_least("general.num_fewshot", self.num_fewshot, 0),
            at_least("general.batch_size", self.batch_size, 1),
            one_of("general.rows", self.rows, GENERAL_ROWS),
            None if len(set(self.tasks)) == len(self.tasks) else f"general.tasks names a task twice: {self.tasks}",
        ])


@dataclass
class TrainerConfig:
    device: str = "auto"  # one of DEVICES
    mixed_precision: str = "no"  # one of MIXED_PRECISION
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

    def __post_init__(self):
        lr_ok = isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0
        raise_problems([
            at_least("trainer.batch_size", self.batch_size, 1),
            at_least("trainer.grad_accum", self.grad_accum, 1),
            at_least("trainer.epochs", self.epochs, 1),
            None if lr_ok else f"trainer.lr must be a finite number > 0, got {self.lr}",
            at_least("trainer.max_prompt_tokens", self.max_prompt_tokens, MIN_PROMPT_TOKENS),
            at_least("trainer.log_every", self.log_every, 1),  # a step counter is taken modulo it
            None if 0 <= self.warmup_ratio <= 1 else f"trainer.warmup_ratio must be in [0, 1], got {self.warmup_ratio}",
            at_least("trainer.weight_decay", self.weight_decay, 0),
            at_least("trainer.max_grad_norm", self.max_grad_norm, 0),
            at_least("trainer.max_steps_per_task", self.max_steps_per_task, 0),
            at_least("trainer.num_threads", self.num_threads, 0),
            *(at_least(f"trainer.epochs_per_task.{task}", n, 1) for task, n in (self.epochs_per_task or {}).items()),
            one_of("trainer.device", self.device, DEVICES),
            one_of("trainer.mixed_precision", self.mixed_precision, MIXED_PRECISION),
        ])


@dataclass
class LoggerConfig:
    name: str = "none"  # one of LOGGERS
    project: str = "clbench"
    mode: str = "offline"  # wandb mode: offline by default, online only when asked
    dir: Optional[str] = None

    def __post_init__(self):
        raise_problems([one_of("logger.name", self.name, LOGGERS)])


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": DEFAULT_STRATEGY})
    eval: EvalConfig = field(default_factory=EvalConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1
    results_dir: str = "results"
    resume: bool = True  # continue an interrupted identical run from its last finished task
    keep_checkpoints: bool = False
    leaderboard: bool = True  # regenerate the leaderboard after the run
    tag: str = ""
    dry_run: bool = False  # print the run's plan (stages, steps, evaluation cells) and stop, loading no model
    # set by a tuned config (+tuned=<name>, written by clbench-tune): the study behind its values (bookkeeping:
    # the values themselves are in the config)
    tuning: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # the blocks checked themselves when they were built; the stream's names need the data block's user
        # tasks; numpy's and torch's seeding take [0, 2^32)
        raise_problems([*self.stream.name_problems(self.data.extra_tasks),
                        "eval.split=val needs data.val_per_class (examples per class held out of training)"
                        if self.eval.split == "val" and not self.data.val_per_class else None,
                        None if 0 <= self.seed < 2**32 else f"seed must be in [0, 2^32), got {self.seed}"])


# the default strategy of a run, and so the leaderboard's default baseline
DEFAULT_STRATEGY = "seq_lora"


def strategy_defaults() -> dict[str, dict[str, Any]]:
    """{strategy name: {'name': ..., every field of its config dataclass at its default}} for every registered
    strategy whose config has defaults for all fields (compose has none: its parts are its whole content)."""
    from strategies.base import defaults_of, registered

    out = {}
    for name in registered():
        default = defaults_of(name)
        if default is not None:
            out[name] = default
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


def config_dict(cfg: RunConfig | dict) -> dict:
    """The run's configuration as plain JSON-able data (what the record stores and the identity hashes)."""
    from omegaconf import OmegaConf

    return cfg if isinstance(cfg, dict) else OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
