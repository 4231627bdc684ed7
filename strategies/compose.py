"""Compose strategies as the papers do (MIGU + replay, MIGU + O-LoRA): hooks run part by part, in order.

The first part owns the model set-up and the stage plan; later parts should use `adapter: none`. Losses chain
(each part adds its terms to the running loss), evaluation contexts nest, and state is kept per part.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from strategies.base import Hooks, build, register


@dataclass
class ComposeConfig:
    parts: list[dict[str, Any]] = field(default_factory=list)


@register("compose", ComposeConfig)
class Compose(Hooks):
    def __init__(self, cfg: ComposeConfig):
        if len(cfg.parts) < 2:
            raise ValueError("compose needs at least two parts")
        self.parts = [build(dict(p)) for p in cfg.parts]
        self.needs_hidden_states = any(p.needs_hidden_states for p in self.parts)

    def prepare_model(self, model, ctx):
        for p in self.parts:
            model = p.prepare_model(model, ctx)
        return model

    def stages(self, tasks):
        return self.parts[0].stages(tasks)

    def _each(self, hook: str, ctx) -> None:
        for p in self.parts:
            getattr(p, hook)(ctx)

    def before_task(self, ctx):
        self._each("before_task", ctx)

    def after_backward(self, ctx):
        self._each("after_backward", ctx)

    def before_optimizer_step(self, ctx):
        self._each("before_optimizer_step", ctx)

    def after_optimizer_step(self, ctx):
        self._each("after_optimizer_step", ctx)

    def after_task(self, ctx):
        self._each("after_task", ctx)

    def train_batch(self, ctx, batch):
        for p in self.parts:
            batch = p.train_batch(ctx, batch)
        return batch

    def loss(self, ctx, batch, outputs, loss):
        for p in self.parts:
            loss = p.loss(ctx, batch, outputs, loss)
        return loss

    @contextlib.contextmanager
    def eval_model(self, ctx):
        with contextlib.ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p.eval_model(ctx))
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
