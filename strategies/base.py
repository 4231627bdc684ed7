"""The strategy interface: a config dataclass, a class with hook methods, and a registry entry.

The training loop (benchmark/runner.py) calls these hooks and never branches on a strategy's name:

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
    after_stage        the stage is trained (buffer fill, freezing)
    eval_model         a context manager that sets the model up for evaluation (I-LoRA's slow learner)
    state_dict / load_state_dict   tensors (saved with safetensors) and JSON metadata for resume
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch

from benchmark.errors import ClbenchError


class Strategy(Protocol):
    name: ClassVar[str]
    needs_hidden_states: bool

    def refuse(self, engine: str, mixed_precision: str) -> str | None: ...
    def prepare_model(self, model, ctx): ...
    def stages(self, tasks: list) -> list[list]: ...
    def before_stage(self, ctx) -> None: ...
    def train_items(self, ctx, items: list) -> list: ...
    def train_batch(self, ctx, batch: dict[str, torch.Tensor], items: list) -> dict[str, torch.Tensor]: ...
    def loss(self, ctx, batch, outputs, loss: torch.Tensor) -> torch.Tensor: ...
    def before_optimizer_step(self, ctx) -> None: ...
    def optimizer_step(self, ctx) -> None: ...
    def after_optimizer_step(self, ctx) -> None: ...
    def after_stage(self, ctx) -> None: ...
    def eval_model(self, ctx) -> contextlib.AbstractContextManager: ...
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...
    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], ctx) -> None: ...


@dataclass
class LoraSettings:
    """PEFT LoRA settings shared by the LoRA-based strategies (defaults: O-LoRA/MIGU code; targets: query and
    value, LLaMA's q_proj/v_proj and T5's q/v alike)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.0
    # auto: the attention query/value projections under the model's own names (strategies/lora.py)
    target_modules: list[str] = field(default_factory=lambda: ["auto"])


class Hooks:
    """No-op defaults for every hook, so that a strategy writes only the hooks it needs."""

    needs_hidden_states = False
    # strategies that keep references to parameter tensors across steps (frozen adapters, EMA targets, masked
    # weights): FSDP may flatten and replace those tensors after `prepare`, so the runner refuses FSDP for them
    holds_parameter_refs = False

    def refuse(self, engine: str, mixed_precision: str) -> str | None:
        """Why this strategy cannot run under `engine` (no | multi_cpu | multi_gpu | fsdp | deepspeed | ...)
        and `mixed_precision`, or None. Checked before any model is loaded."""
        if self.holds_parameter_refs and engine == "fsdp":
            return "it keeps references to parameters that FSDP flattens after prepare (untested; refused)"
        return None

    def prepare_model(self, model, ctx):
        return model

    def stages(self, tasks: list) -> list[list]:
        return [[t] for t in tasks]

    def before_stage(self, ctx) -> None:
        pass

    def train_items(self, ctx, items):
        return items

    def train_batch(self, ctx, batch, items):
        return batch

    def loss(self, ctx, batch, outputs, loss):
        return loss

    def before_optimizer_step(self, ctx) -> None:
        pass

    def optimizer_step(self, ctx) -> None:
        ctx.optimizer.step()

    def after_optimizer_step(self, ctx) -> None:
        pass

    def after_stage(self, ctx) -> None:
        pass

    @contextlib.contextmanager
    def eval_model(self, ctx) -> Iterator[None]:
        yield

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, tensors, meta, ctx) -> None:
        pass


class StrategyConfigError(ClbenchError, ValueError):
    pass


_REGISTRY: dict[str, tuple[type, Callable[..., Any]]] = {}


def register(name: str, config_cls: type):
    """Class decorator: `@register("olora", OLoRAConfig)` makes `strategy=olora` available."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name][1] is not cls:
            raise StrategyConfigError(f"strategy {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = (config_cls, cls)
        return cls

    return wrap


def register_variant(name: str, config_cls: type, factory: Callable[[Any], Any]) -> None:
    """A registered configuration of another strategy: `factory(config)` returns an instance of that strategy,
    which runs and is recorded under `name` (IncLoRA is O-LoRA with both lambdas at zero)."""
    if name in _REGISTRY and _REGISTRY[name][1] is not factory:
        raise StrategyConfigError(f"strategy {name!r} is registered twice")
    _REGISTRY[name] = (config_cls, factory)


def registered() -> list[str]:
    return sorted(_REGISTRY)


def _build_dataclass(cls: type, values: dict[str, Any], where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise StrategyConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, val in values.items():
        default = names[key].default_factory() if names[key].default_factory is not dataclasses.MISSING else names[key].default
        if dataclasses.is_dataclass(default) and isinstance(val, dict):
            val = _build_dataclass(type(default), val, f"{where}.{key}")
        elif isinstance(default, bool) and not isinstance(val, bool):
            raise StrategyConfigError(f"{where}.{key}: expected true/false, got {val!r}")
        elif (isinstance(default, (int, float)) and not isinstance(default, bool) and val is not None
              and str(names[key].type) in ("int", "float", "Optional[int]", "Optional[float]", "int | None", "float | None")):
            if not isinstance(val, (int, float)) or isinstance(val, bool):
                raise StrategyConfigError(f"{where}.{key}: expected a number, got {val!r}")
        kwargs[key] = val
    return cls(**kwargs)


def build(cfg: dict[str, Any]):
    """A strategy instance from its config mapping: {'name': ..., 'module'?: ..., <fields of its config dataclass>}."""
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
    config_cls, make = _REGISTRY[name]
    strategy = make(_build_dataclass(config_cls, cfg, f"strategy {name}"))
    if not isinstance(make, type):
        strategy.name = name  # a variant runs as another class but is recorded under its own name
    return strategy


def trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
