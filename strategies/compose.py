"""Compose strategies as the papers do (MIGU + replay, MIGU + O-LoRA): hooks run part by part, in order.

The first part owns the model set-up and the stage plan; later parts should use `adapter: none`. Losses chain
(each part adds its terms to the running loss), training sets and batches chain, evaluation contexts nest, and
state is kept per part. At most one part may replace the optimizer step (two replacements cannot both hold).
A composed run is recorded under the parts' names joined by '+', e.g. `replay+migu`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from strategies.base import Hooks, OptionError, StrategyConfigError, build, register

# hooks that take only the context and return nothing: every part is called, in order
_BROADCAST = ("before_stage", "before_optimizer_step", "after_optimizer_step", "after_stage")


@dataclass
class ComposeConfig:
    parts: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        # each part's own settings are checked when Compose builds it (strategy <part name>.<key>)
        if not (isinstance(self.parts, list) and len(self.parts) >= 2):
            raise OptionError(f"parts must be a list of at least two parts, got {self.parts!r}")
        for i, p in enumerate(self.parts):
            if not (isinstance(p, dict) and "name" in p):
                raise OptionError(f"parts[{i}] must be a mapping with a name, got {p!r}")


def _broadcast(hook: str):
    def call(self, ctx) -> None:
        for p in self.parts:
            getattr(p, hook)(ctx)

    call.__name__ = hook
    return call


@register("compose", ComposeConfig)
class Compose(Hooks):
    def __init__(self, cfg: ComposeConfig):
        self.parts = [build(dict(p)) for p in cfg.parts]
        self.name = "+".join(p.name for p in self.parts)
        self.needs_hidden_states = any(p.needs_hidden_states for p in self.parts)
        self.holds_parameter_refs = any(p.holds_parameter_refs for p in self.parts)
        self.uses_task_identity = any(p.uses_task_identity for p in self.parts)
        steppers = [p for p in self.parts if type(p).optimizer_step is not Hooks.optimizer_step]
        if len(steppers) > 1:
            raise StrategyConfigError(f"strategy compose: {' and '.join(p.name for p in steppers)} both replace the "
                                      "optimizer step; at most one part may")
        self._stepper = steppers[0] if steppers else None

    def refuse(self, engine, mixed_precision):
        return next((f"{p.name}: {r}" for p in self.parts if (r := p.refuse(engine, mixed_precision))), None)

    def prepare_model(self, model, ctx):
        for p in self.parts:
            model = p.prepare_model(model, ctx)
        return model

    def stages(self, tasks):
        return self.parts[0].stages(tasks)

    def train_items(self, ctx, items):
        for p in self.parts:
            items = p.train_items(ctx, items)
        return items

    def train_batch(self, ctx, batch, items):
        for p in self.parts:
            batch = p.train_batch(ctx, batch, items)
        return batch

    def loss(self, ctx, batch, outputs, loss):
        for p in self.parts:
            loss = p.loss(ctx, batch, outputs, loss)
        return loss

    def optimizer_step(self, ctx):
        (self._stepper or super()).optimizer_step(ctx)

    def param_groups(self, ctx, params):
        # the groups a part gives a rate or decay of its own (a soft prompt's); every other parameter trains at
        # trainer.lr, whichever part it belongs to
        groups, owned = [], set()
        for p in self.parts:
            for g in p.param_groups(ctx, params):
                if "lr" in g or "weight_decay" in g:
                    groups.append(g)
                    owned |= {id(q) for q in g["params"]}
        rest = [q for q in params if id(q) not in owned]
        return groups + ([{"params": rest}] if rest else [])

    @contextlib.contextmanager
    def eval_model(self, ctx):
        with contextlib.ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p.eval_model(ctx))
            yield

    @contextlib.contextmanager
    def eval_task(self, ctx, task):
        with contextlib.ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p.eval_task(ctx, task))
            yield

    def state_dict(self):
        tensors, meta = {}, {}
        for i, p in enumerate(self.parts):
            t, m = p.state_dict()
            tensors.update({f"part{i}/{k}": v for k, v in t.items()})
            meta[f"part{i}"] = m
        return tensors, meta

    def load_state_dict(self, tensors, meta, ctx):
        for i, p in enumerate(self.parts):
            pre = f"part{i}/"
            p.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, meta[f"part{i}"], ctx)


for _hook in _BROADCAST:
    setattr(Compose, _hook, _broadcast(_hook))
