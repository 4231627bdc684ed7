"""The strategy interface: a config dataclass, a class with hook methods, and a registry entry.

The training loop (benchmark/runner/) calls these hooks and never branches on a strategy's name:

    prepare_model      once, before anything else: add adapters, freeze weights, register forward hooks
    refuse             names a set-up the strategy cannot run correctly (engine, precision), checked at start
    stages             how the stream is cut into training stages (one per task; MTL: all tasks at once)
    before_stage       a stage starts, once per stage (fresh adapter, buffer bookkeeping, reference statistics)
    train_items        may extend a stage's training set (LoRAReplay adds the stored examples of earlier tasks)
    train_batch        may replace the batch; `items` are its examples (interleaved replay appends stored ones)
    loss               may add terms to the answer cross-entropy (regularisers, replay losses); `ctx.task_ce`
                       is the answer cross-entropy alone, for strategies that reweight it (GeRe)
    before_optimizer_step   once per accumulation window, before clipping (MIGU masks gradient rows)
    optimizer_step     steps the optimizer (default: one step; MIGU steps masked weights one at a time)
    after_optimizer_step    once per accumulation window (I-LoRA's EMA)
    param_groups       the optimizer's parameter groups at a stage's start (default: one group at trainer.lr;
                       soft prompts train at their own rate, as their papers' scripts do)
    after_stage        the stage is trained (buffer fill, freezing)
    eval_model         a context manager that sets the model up for evaluation (I-LoRA's slow learner)
    eval_task          inside eval_model, a context manager per evaluated task: a strategy that declares
                       `uses_task_identity` picks that task's model (PerTaskFT's own adapter); records say so
    state_dict / load_state_dict   tensors (saved with safetensors) and JSON metadata for resume
"""
from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch

from benchmark.api import ClbenchError, RunContext


class Strategy(Protocol):
    name: ClassVar[str]
    needs_hidden_states: bool
    holds_parameter_refs: bool
    uses_task_identity: bool

    def refuse(self, engine: str, mixed_precision: str) -> str | None: ...
    def prepare_model(self, model, ctx: RunContext): ...
    def stages(self, tasks: list) -> list[list]: ...
    def before_stage(self, ctx: RunContext) -> None: ...
    def train_items(self, ctx: RunContext, items: list) -> list: ...
    def train_batch(self, ctx: RunContext, batch: dict[str, torch.Tensor], items: list) -> dict[str, torch.Tensor]: ...
    def loss(self, ctx: RunContext, batch, outputs, loss: torch.Tensor) -> torch.Tensor: ...
    def before_optimizer_step(self, ctx: RunContext) -> None: ...
    def optimizer_step(self, ctx: RunContext) -> None: ...
    def param_groups(self, ctx: RunContext, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]: ...
    def after_optimizer_step(self, ctx: RunContext) -> None: ...
    def after_stage(self, ctx: RunContext) -> None: ...
    def eval_model(self, ctx: RunContext) -> contextlib.AbstractContextManager: ...
    def eval_task(self, ctx: RunContext, task: str) -> contextlib.AbstractContextManager: ...
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...
    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], ctx: RunContext) -> None: ...


@dataclass
class LoraSettings:
    """PEFT LoRA settings shared by the LoRA-based strategies. r 8, alpha 32 and the query/value targets (LLaMA's
    q_proj/v_proj, T5's q/v) are the O-LoRA and MIGU code's; their scripts use LoRA dropout 0.1 (O-LoRA) and 0.05
    (MIGU), where clbench defaults to 0 (docs/strategies.md, Faithfulness): strategy.lora.dropout sets it."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.0
    # auto: the attention query/value projections under the model's own names (strategies/common/lora.py)
    target_modules: list[str] = field(default_factory=lambda: ["auto"])


class Hooks:
    """No-op defaults for every hook, so that a strategy writes only the hooks it needs."""

    needs_hidden_states = False
    # strategies that keep references to parameter tensors across steps (frozen adapters, EMA targets, masked
    # weights): FSDP may flatten and replace those tensors after `prepare`, so the runner refuses FSDP for them
    holds_parameter_refs = False
    # evaluation is told which task each example belongs to (eval_task): such results are not comparable with
    # task-agnostic ones, and the record and the leaderboard say so
    uses_task_identity = False

    def __init__(self, cfg: Any = None):
        self.cfg = cfg  # the strategy's config dataclass, checked when it was built

    def refuse(self, engine: str, mixed_precision: str) -> str | None:
        """Why this strategy cannot run under `engine` (no | multi_cpu | multi_gpu | fsdp | deepspeed | ...)
        and `mixed_precision`, or None. Checked before any model is loaded."""
        if self.holds_parameter_refs and engine == "fsdp":
            return "it keeps references to parameters that FSDP flattens after prepare (untested; refused)"
        return None

    def prepare_model(self, model, ctx: RunContext):
        return model

    def stages(self, tasks: list) -> list[list]:
        return [[t] for t in tasks]

    def before_stage(self, ctx: RunContext) -> None:
        pass

    def train_items(self, ctx: RunContext, items):
        return items

    def train_batch(self, ctx: RunContext, batch, items):
        return batch

    def loss(self, ctx: RunContext, batch, outputs, loss):
        return loss

    def before_optimizer_step(self, ctx: RunContext) -> None:
        pass

    def optimizer_step(self, ctx: RunContext) -> None:
        ctx.optimizer.step()

    def after_optimizer_step(self, ctx: RunContext) -> None:
        pass

    def param_groups(self, ctx: RunContext, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        """AdamW's parameter groups over `params` (every trainable parameter): a group without "lr" or
        "weight_decay" takes trainer.lr and trainer.weight_decay. Every parameter must be in exactly one group."""
        return [{"params": params}]

    def after_stage(self, ctx: RunContext) -> None:
        pass

    @contextlib.contextmanager
    def eval_model(self, ctx: RunContext) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def eval_task(self, ctx: RunContext, task: str) -> Iterator[None]:
        yield

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, tensors, meta, ctx: RunContext) -> None:
        pass


class StrategyConfigError(ClbenchError, ValueError):
    pass


class OptionError(StrategyConfigError):
    """A bad value of one option, named relative to its config (`lambda1 must be ...`, `buffer.size must be ...`):
    the builder, which knows where the config sits, prefixes the path (`strategy olora.lambda1 must be ...`)."""


@dataclass(frozen=True)
class Registration:
    config_cls: type
    factory: Callable[[Any], Any]  # config -> strategy instance (a Hooks class, or a function for a variant)
    # the objective's version: bump it when the strategy's code changes what an unchanged config computes; a
    # version other than 1 enters the run's identity (records.store.CONTENT_FACTS), so that old and new never pool
    version: int = 1


_REGISTRY: dict[str, Registration] = {}


def register(name: str, config_cls: type, factory: Callable[[Any], Any] | None = None, *, version: int = 1):
    """Make `strategy=<name>` available, PEFT's one-call registration: `register("olora", OLoRAConfig, OLoRA)`,
    or as a class decorator, `@register("olora", OLoRAConfig)`. A factory that is not the class (IncLoRA is O-LoRA
    with both lambdas at zero) returns an instance of another strategy, which runs and is recorded as `name`.
    `version`: the objective's version (see Registration)."""
    if factory is None:
        def wrap(cls):
            register(name, config_cls, cls, version=version)
            return cls

        return wrap
    if name in _REGISTRY and _REGISTRY[name].factory is not factory:
        raise StrategyConfigError(f"strategy {name!r} is registered twice")
    if not dataclasses.is_dataclass(config_cls):
        raise StrategyConfigError(f"strategy {name!r}: its config {config_cls!r} must be a dataclass")
    if isinstance(factory, type):
        factory.name = name  # what the record names (an instance may refine it: a composition names its parts)
    _REGISTRY[name] = Registration(config_cls, factory, version)
    return factory


def registered() -> list[str]:
    import strategies  # noqa: F401  (registers the built-in strategies)

    return sorted(_REGISTRY)


def _numeric(tp: Any) -> bool:
    """int, float, or Optional of either: the annotations whose values must be numbers."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return len(args) == 1 and _numeric(args[0])
    return tp in (int, float)


def _build_dataclass(cls: type, values: dict[str, Any], where: str):
    """`cls(**values)`, checked: unknown keys, and values of the wrong kind for a bool or numeric field (types
    resolved from the class's annotations, whether or not its module defers them), before the config's own
    __post_init__; an OptionError it raises is prefixed with `where`, the config's path."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise StrategyConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, val in values.items():
        tp = hints.get(key)
        if dataclasses.is_dataclass(tp) and isinstance(val, dict):
            val = _build_dataclass(tp, val, f"{where}.{key}")
        elif tp is bool and not isinstance(val, bool):
            raise StrategyConfigError(f"{where}.{key}: expected true/false, got {val!r}")
        elif _numeric(tp) and val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool)):
            raise StrategyConfigError(f"{where}.{key}: expected a number, got {val!r}")
        kwargs[key] = val
    try:
        return cls(**kwargs)
    except OptionError as e:
        raise StrategyConfigError(f"{where}.{e}") from None


def _resolve(cfg: dict[str, Any]) -> tuple[str, Registration, dict[str, Any]]:
    import importlib

    import strategies  # noqa: F401  (registers the built-in strategies)

    cfg = dict(cfg)
    module = cfg.pop("module", None)
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise StrategyConfigError(f"strategy module {module!r} could not be imported: {e}") from None
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise StrategyConfigError(f"unknown strategy {name!r}; registered: {', '.join(registered())}")
    return name, _REGISTRY[name], cfg


def build_config(cfg: dict[str, Any]):
    """The checked config dataclass of a strategy config mapping {'name': ..., 'module'?: ..., <fields>}."""
    name, reg, values = _resolve(cfg)
    return _build_dataclass(reg.config_cls, values, f"strategy {name}")


def complete(cfg: dict[str, Any]) -> dict[str, Any]:
    """The strategy config mapping with every field of its dataclass, at its default where the mapping is silent:
    what a record stores and hashes, so that a run's identity does not depend on how its YAML was written."""
    out = {k: cfg[k] for k in ("name", "module") if k in cfg}
    return {**out, **_plain(build_config(cfg))}


def _plain(config: Any) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    # a composition's parts are strategy mappings themselves
    if isinstance(values.get("parts"), list) and all(isinstance(p, dict) and "name" in p for p in values["parts"]):
        values["parts"] = [complete(p) for p in values["parts"]]
    return values


def versions_of(cfg: dict[str, Any]) -> dict[str, int]:
    """{name: objective version} of the registered strategies a strategy config mapping runs (a composition's
    parts included) whose version is not 1; unknown names are left to `build` to refuse."""
    import strategies  # noqa: F401  (registers the built-in strategies)

    out = {}
    name = cfg.get("name") if isinstance(cfg, dict) else None
    if name in _REGISTRY and _REGISTRY[name].version != 1:
        out[name] = _REGISTRY[name].version
    for part in (cfg.get("parts") or []) if isinstance(cfg, dict) else []:
        out.update(versions_of(part))
    return dict(sorted(out.items()))


def defaults_of(name: str) -> dict[str, Any] | None:
    """{'name': name, every field at its default}, or None for a strategy whose config has required fields
    (compose: its parts are its whole content)."""
    reg = _REGISTRY[name]
    try:
        default = reg.config_cls()
    except (StrategyConfigError, TypeError):
        return None
    return {"name": name, **dataclasses.asdict(default)}


def build(cfg: dict[str, Any]):
    """A strategy instance from its config mapping: {'name': ..., 'module'?: ..., <fields of its config dataclass>}."""
    name, reg, values = _resolve(cfg)
    strategy = reg.factory(_build_dataclass(reg.config_cls, values, f"strategy {name}"))
    if not isinstance(reg.factory, type):
        strategy.name = name  # a variant runs as another class but is recorded under its own name
    return strategy
